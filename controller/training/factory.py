"""Pick the JobRunner named by the settings: local process (default), container, or Kubernetes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from controller.training.base import JobRunner

if TYPE_CHECKING:
    from controller.config import ControllerSettings


def make_runner(settings: ControllerSettings) -> JobRunner:
    """The JobRunner named by ``FEDGE_JOB_RUNNER``."""
    if settings.job_runner == "container":
        from controller.training.container import ContainerJobRunner

        return ContainerJobRunner(
            base_url=settings.docker_host,
            image=settings.container_image,
            network=settings.container_network,
            ulimits=settings.container_ulimits or None,
        )
    if settings.job_runner == "kubernetes":
        from controller.training.kubernetes import HostPathJobDir, KubernetesJobRunner, PvcJobDir

        job_dir = (
            PvcJobDir(claim_name=settings.k8s_job_pvc, mount_root=settings.data_dir / "jobs")
            if settings.k8s_job_pvc
            else HostPathJobDir()
        )
        return KubernetesJobRunner(
            namespace=settings.k8s_namespace, image=settings.k8s_image, job_dir=job_dir
        )
    from controller.training.local import LocalJobRunner

    return LocalJobRunner()
