"""Joining an existing multi-node Ray cluster (Ray's local test cluster: two raylets on this machine)."""

from __future__ import annotations

import pytest
import requests
from ray import serve

from ipa.models.samples import photo_jpegs
from ipa.runtime.ray.cluster import APP, RaySettings, connect, free_port, shutdown
from ipa.runtime.ray.runtime import RayRuntime
from tests.test_ray_serving import config, small_spec

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_replicas_are_placed_across_the_nodes_of_a_joined_cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=2)
    spec = small_spec()
    settings = RaySettings(address=cluster.address, port=free_port(), deploy_timeout_s=240)
    try:
        started = connect(settings, spec)
        assert ray.cluster_resources()["CPU"] == 3 and len(ray.nodes()) == 2
        rt = RayRuntime(spec, settings)
        rt.start(config(cls_replicas=2))  # 3 one-CPU replicas on nodes of 1 and 2 CPUs: both nodes are used
        try:
            r = requests.post(rt.url, data=photo_jpegs(width=320)[0], headers={"content-type": "image/jpeg"},
                              timeout=60)
            assert r.status_code == 200
            nodes = set()
            for stage in ("detect", "classify"):
                handle = serve.get_deployment_handle(stage, APP)
                nodes |= {handle.state.remote().result()["node"] for _ in range(12)}
            assert len(nodes) == 2
        finally:
            rt.stop()
        shutdown(started)
    finally:
        ray.shutdown()
        cluster.shutdown()
