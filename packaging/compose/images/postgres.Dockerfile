# PostgreSQL 15 from Debian 12 on fedge's base image (built locally: no registry needed).
FROM localhost/fedge-base:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /var/lib/fedge-pg && chown postgres:postgres /var/lib/fedge-pg
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER postgres
ENV PGDATA=/var/lib/fedge-pg/data PGPORT=5432 LANG=C.UTF-8
ENTRYPOINT ["/bin/sh", "/usr/local/bin/postgres-entrypoint.sh"]
