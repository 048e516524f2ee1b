"""drift policy: a model's on_drift policy and the actions it took (notify, retrain -> translate -> canary)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("drift_policy", sa.JSON(), nullable=True))
    op.create_table(
        "drift_actions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("model_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("detector", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("drift_actions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_drift_actions_model_id"), ["model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_drift_actions_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_drift_actions_created_at"), ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("drift_actions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_drift_actions_created_at"))
        batch_op.drop_index(batch_op.f("ix_drift_actions_state"))
        batch_op.drop_index(batch_op.f("ix_drift_actions_model_id"))
    op.drop_table("drift_actions")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("drift_policy")
