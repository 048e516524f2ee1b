"""the FL audit trail: one row per aggregated round (Merkle leaves, root, aggregate, transaction)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fl_audit_rounds",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("updates_root", sa.String(length=64), nullable=False),
        sa.Column("aggregate_hash", sa.String(length=64), nullable=False),
        sa.Column("update_count", sa.Integer(), nullable=False),
        sa.Column("leaves", sa.JSON(), nullable=False),
        sa.Column("disputes", sa.JSON(), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["fl_jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "round", name="uq_fl_audit_rounds_round"),
    )
    with op.batch_alter_table("fl_audit_rounds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fl_audit_rounds_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fl_audit_rounds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fl_audit_rounds_job_id"))
    op.drop_table("fl_audit_rounds")
