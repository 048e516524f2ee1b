"""device events (drift alarms from the agents' monitors) and the drift reference data set of a deployment

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_events",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("detector", sa.String(length=32), nullable=True),
        sa.Column("model_id", sa.String(length=36), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("occurred_at", sa.String(length=40), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "seq", name="uq_device_events_seq"),
    )
    with op.batch_alter_table("device_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_events_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_device_events_type"), ["type"], unique=False)
        batch_op.create_index(batch_op.f("ix_device_events_received_at"), ["received_at"], unique=False)
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reference_dataset_id", sa.String(length=36), nullable=True))
        batch_op.create_foreign_key(
            "fk_deployments_reference_dataset_id", "datasets", ["reference_dataset_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_constraint("fk_deployments_reference_dataset_id", type_="foreignkey")
        batch_op.drop_column("reference_dataset_id")
    with op.batch_alter_table("device_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_events_received_at"))
        batch_op.drop_index(batch_op.f("ix_device_events_type"))
        batch_op.drop_index(batch_op.f("ix_device_events_device_id"))
    op.drop_table("device_events")
