# anvil (EVM JSON-RPC node) from npm, the version package.json pins (the platform package holds the
# binary; Debian's npm 9 skips the wrapper's optional dependencies); state persisted in /data.
FROM localhost/fedge-base:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN mkdir -p /opt/anvil && cd /opt/anvil \
    && if [ -f /run/host-ca.crt ]; then export NODE_EXTRA_CA_CERTS=/run/host-ca.crt npm_config_cafile=/run/host-ca.crt; fi \
    && npm install --no-audit --no-fund "@foundry-rs/anvil-linux-$(dpkg --print-architecture)@1.7.1" \
    && ln -s /opt/anvil/node_modules/@foundry-rs/anvil-linux-*/bin/anvil /usr/local/bin/anvil \
    && anvil --version
ENTRYPOINT ["/bin/sh", "-c", "exec anvil --host 127.0.0.1 --port \"${ANVIL_PORT:-8545}\" --state /data/anvil-state.json --state-interval 1 --silent"]
