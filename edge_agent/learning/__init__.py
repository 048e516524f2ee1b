"""Federated learning on the device (needs the ``train`` extra: ``pip install 'fedge[train]'``)."""
