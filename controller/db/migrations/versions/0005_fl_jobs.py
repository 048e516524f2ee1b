"""federated-learning jobs, their rounds and participants, SuperLink nodes and the device privacy mirror

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fl_jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("engine", sa.String(length=32), nullable=False),
        sa.Column("model_id", sa.String(length=36), nullable=False),
        sa.Column("start_version", sa.Integer(), nullable=True),
        sa.Column("network", sa.String(length=300), nullable=False),
        sa.Column("rounds", sa.Integer(), nullable=False),
        sa.Column("min_clients", sa.Integer(), nullable=False),
        sa.Column("strategy", sa.JSON(), nullable=False),
        sa.Column("privacy", sa.JSON(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        sa.Column("rounds_completed", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.String(length=36), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result_version", sa.Integer(), nullable=True),
        sa.Column("result_sha256", sa.String(length=64), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("chain", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("fl_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fl_jobs_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_fl_jobs_model_id"), ["model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_fl_jobs_created_at"), ["created_at"], unique=False)

    op.create_table(
        "fl_participants",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("node_id", sa.String(length=20), nullable=True),
        sa.Column("command_id", sa.String(length=36), nullable=True),
        sa.Column("rounds_trained", sa.Integer(), nullable=False),
        sa.Column("budget_refusals", sa.Integer(), nullable=False),
        sa.Column("rejections", sa.Integer(), nullable=False),
        sa.Column("epsilon", sa.Double(), nullable=True),
        sa.Column("epsilon_before", sa.Double(), nullable=True),
        sa.Column("budget_remaining", sa.Double(), nullable=True),
        sa.Column("delta", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["fl_jobs.id"]),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "device_id", name="uq_fl_participants_device"),
    )
    with op.batch_alter_table("fl_participants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fl_participants_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_fl_participants_device_id"), ["device_id"], unique=False)

    op.create_table(
        "fl_rounds",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column("stragglers", sa.JSON(), nullable=False),
        sa.Column("budget_refused", sa.JSON(), nullable=False),
        sa.Column("rejected", sa.JSON(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("bytes_sent", sa.BigInteger(), nullable=False),
        sa.Column("bytes_received", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=False),
        sa.Column("clients", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["fl_jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "round", "kind", name="uq_fl_rounds_phase"),
    )
    with op.batch_alter_table("fl_rounds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fl_rounds_job_id"), ["job_id"], unique=False)

    op.create_table(
        "fl_nodes",
        sa.Column("device_id", sa.String(length=36), nullable=False),
        sa.Column("superlink", sa.String(length=300), nullable=False),
        sa.Column("node_id", sa.String(length=20), nullable=False),
        sa.Column("public_key_sha256", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("unregistered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("device_id"),
    )
    with op.batch_alter_table("fl_nodes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fl_nodes_state"), ["state"], unique=False)

    op.create_table(
        "device_privacy",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=False),
        sa.Column("dataset", sa.String(length=200), nullable=False),
        sa.Column("epsilon_spent", sa.Double(), nullable=False),
        sa.Column("budget_remaining", sa.Double(), nullable=True),
        sa.Column("delta", sa.Double(), nullable=True),
        sa.Column("rounds", sa.Integer(), nullable=False),
        sa.Column("refusals", sa.Integer(), nullable=False),
        sa.Column("last_job_id", sa.String(length=36), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "dataset", name="uq_device_privacy_dataset"),
    )
    with op.batch_alter_table("device_privacy", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_privacy_device_id"), ["device_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("device_privacy", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_privacy_device_id"))
    op.drop_table("device_privacy")
    with op.batch_alter_table("fl_nodes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fl_nodes_state"))
    op.drop_table("fl_nodes")
    with op.batch_alter_table("fl_rounds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fl_rounds_job_id"))
    op.drop_table("fl_rounds")
    with op.batch_alter_table("fl_participants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fl_participants_device_id"))
        batch_op.drop_index(batch_op.f("ix_fl_participants_job_id"))
    op.drop_table("fl_participants")
    with op.batch_alter_table("fl_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fl_jobs_created_at"))
        batch_op.drop_index(batch_op.f("ix_fl_jobs_model_id"))
        batch_op.drop_index(batch_op.f("ix_fl_jobs_state"))
    op.drop_table("fl_jobs")
