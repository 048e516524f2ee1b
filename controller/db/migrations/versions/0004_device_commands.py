"""device commands (grid-run) and stored device telemetry

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_commands",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("model_id", sa.String(length=36), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("device_commands", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_commands_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_device_commands_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_device_commands_created_at"), ["created_at"], unique=False)

    op.create_table(
        "device_telemetry",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=True),
        sa.Column("command_id", sa.String(length=36), nullable=True),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "seq", name="uq_device_telemetry_seq"),
    )
    with op.batch_alter_table("device_telemetry", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_telemetry_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_device_telemetry_command_id"), ["command_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_device_telemetry_received_at"), ["received_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("device_telemetry", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_telemetry_received_at"))
        batch_op.drop_index(batch_op.f("ix_device_telemetry_command_id"))
        batch_op.drop_index(batch_op.f("ix_device_telemetry_device_id"))
    op.drop_table("device_telemetry")
    with op.batch_alter_table("device_commands", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_commands_created_at"))
        batch_op.drop_index(batch_op.f("ix_device_commands_state"))
        batch_op.drop_index(batch_op.f("ix_device_commands_device_id"))
    op.drop_table("device_commands")
