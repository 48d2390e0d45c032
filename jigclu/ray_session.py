"""The Ray session of a jigclu process: starting or joining Ray, and keeping a cluster clean.

* :func:`init_ray`: join a cluster, or start a quiet local one that listens on 127.0.0.1 only;
* where drivers run (:func:`driver_resources`): the processes a node loss must not take with it
  (a sweep's trial drivers, the Ray Train controllers they start, the actors those create) are
  placed on the head node, or on nodes that advertise :data:`DRIVER_RESOURCE` (the cluster
  files mark the head and the on-demand groups with it), never on a spot node;
* :func:`prepare_elastic_run`: Ray's cluster-wide autoscaling coordinator (which every elastic
  Ray Train run asks for its workers) is created on such a node and replaced when the node it
  sat on is gone, and the reservations an earlier attempt of the same run left in it are freed;
* :class:`WorkerGroupJanitor` and :func:`remove_orphaned_worker_groups`: no placement group of
  a finished Ray Train run keeps holding resources.

Ray is imported here and in the other wrapper modules only (``docs/architecture.md``).
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

# quiet, fast-failing defaults for local clusters; users may override them in the environment
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Ray Train's state actor (on the head) records each run's name, id and status: how a sweep tells a
# run waiting for workers (tune/waiting.py) and frees what an earlier attempt reserved (below)
os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
# Ray Train's controller sees a run finish (or a report) only at its next poll of the workers: 2 s by
# default, up to 2 s more start-up and ~5 s more teardown per run (benchmarks/RESULTS.md "Ray overhead":
# teardown 6.1 s -> 0.9 s at 0.25 s); Ray Train passes it on to the controller, remote clusters included
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# A raylet kills a worker process idle for 1 s once the node runs more worker processes than it has
# CPUs (Ray's num_workers_soft_limit). Train's workers and Ray's actors alone reach that on a small
# node, so every Ray Data decode task then paid for a new process (imports, ~1.5 s): measured on
# 1-CPU nodes, a 6-step streamed epoch took 25 s, 1.4 s with this limit. Room for the training and
# decode processes of every CPU, plus Ray's own actors; read by the raylets this process starts (a
# cluster's own nodes need it in their environment: clusters/README.md)
os.environ.setdefault("RAY_num_workers_soft_limit", str(2 * (os.cpu_count() or 1) + 8))

import ray  # noqa: E402
from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback  # noqa: E402

OBJECT_STORE_BYTES = 256 * 1024 * 1024
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # read by Ray's processes at start


@contextmanager
def _loopback_node() -> Iterator[None]:
    """While a local Ray starts: node IP 127.0.0.1, so every process of it listens on loopback only.

    Ray refuses ``_node_ip_address="127.0.0.1"`` (it resolves loopback to the routable IP) and
    then binds GCS, raylet, workers and the metrics servers to all interfaces. Its local mode for
    macOS and Windows (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) uses 127.0.0.1 as the node IP
    instead. That is set here only around a local start (the processes it spawns inherit it),
    then undone, so a later connection to a real cluster from this process is untouched. A user
    who sets the variable keeps theirs.
    """
    from ray._private import ray_constants

    if _LOOPBACK_ENV in os.environ or not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):
        yield
        return
    saved = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        os.environ.pop(_LOOPBACK_ENV, None)
        ray_constants.ENABLE_RAY_CLUSTER = saved


def init_ray(address: str | None = None, verbose: bool = False, num_cpus: int | None = None,
             temp_dir: str | None = None) -> bool:
    """Connect to a cluster (``address`` or ``RAY_ADDRESS``) or start a quiet local one.

    A local Ray listens on 127.0.0.1 only (:func:`_loopback_node`), its dashboard included:
    Train's placement-group cleanup uses the State API, which only exists when the dashboard
    runs; without it a stopped trial's workers leak their CPUs (``docs/architecture.md``, Ray
    pitfalls). Returns True when this call started Ray.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    common: dict[str, Any] = dict(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR,
                                  configure_logging=True)
    if address:
        ray.init(address=address, **common)
        return True
    # address="local": always a new local instance, never a stale cluster left in Ray's temp dir
    with _loopback_node():
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1", _temp_dir=temp_dir,
                 object_store_memory=OBJECT_STORE_BYTES, **common)
    return True




def placement_groups() -> set[str]:
    """Ids of the cluster's placement groups that hold resources now."""
    return {pg_id for pg_id, pg in ray.util.placement_group_table().items() if pg["state"] in ("CREATED", "PENDING")}


def remove_orphaned_worker_groups(cfg: RunConfig, before: set[str], wait_s: float = 15.0) -> list[str]:
    """Remove the placement groups a finished nested Ray Train run left behind.

    In Ray 2.60 a Train V2 controller started inside a Tune trial ends with its trial without
    removing its worker group's placement group (a group created by an actor outlives it), and
    the cleaner actor meant to catch that did not on a multi-node cluster
    (``tests/test_cluster_box.py``): the reserved CPUs then blocked every later trial. A group
    counts as orphaned when it appeared during this run, has this run's bundles, and no live
    actor sits in it (so a concurrent trial's group is never touched); the run's workers get
    ``wait_s`` to exit first.
    """
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state import list_actors

    bundle = {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if cfg.scaling.gpu else {})}
    removed: list[str] = []
    deadline = time.time() + wait_s
    ended = {pg_id for pg_id, pg in ray.util.placement_group_table().items()  # groups there when the run ended
             if pg_id not in before and all(b == bundle for b in pg["bundles"].values())}
    while True:
        table = ray.util.placement_group_table()
        candidates = [pg_id for pg_id in ended if pg_id not in removed and table.get(pg_id, {}).get("state") == "CREATED"]
        if not candidates:
            return removed
        try:
            # this cluster by address: with none, the State API refuses when a second Ray runs on the machine
            # not DEAD: a concurrent trial's new group has workers still being created (PENDING_CREATION)
            actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "!=", "DEAD")],
                                 limit=10000, raise_on_missing_output=False)
            occupied = {a.placement_group_id for a in actors}
        except Exception:  # no State API (no dashboard): leave it to Ray
            return removed
        for pg_id in candidates:
            if pg_id not in occupied:
                remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
                removed.append(pg_id)
        if time.time() > deadline or all(pg_id in removed for pg_id in candidates):
            return removed
        time.sleep(1.0)



# -- where drivers run ---------------------------------------------------------------------------

DRIVER_RESOURCE = "jigclu_driver"
"""A custom resource the cluster files give the head and the on-demand node groups: nodes a
preemption never takes away. Sweep trial drivers ask for a sliver of it (of the head's built-in
resource when no node has it), so a node loss never takes a trial's driver with it."""
HEAD_RESOURCE = "node:__internal_head__"  # every Ray head node has it (ray._common.constants)
DRIVER_SLIVER = 0.001


def driver_resources() -> dict[str, float]:
    """Resources that place an actor on a node that is not preempted: the head, or a node that
    advertises :data:`DRIVER_RESOURCE`."""
    name = DRIVER_RESOURCE if ray.cluster_resources().get(DRIVER_RESOURCE, 0) > 0 else HEAD_RESOURCE
    return {name: DRIVER_SLIVER}


def prepare_elastic_run(run_name: str) -> None:
    """Before an elastic Ray Train run starts: a coordinator that answers, on a driver node, with no
    reservation held for an earlier attempt of the same run (:func:`release_reservations`)."""
    pin_autoscaling_coordinator()
    release_reservations(run_name)


def release_reservations(run_name: str) -> list[str]:
    """Cancel what the autoscaling coordinator still reserves for earlier Ray Train runs named ``run_name``.

    A run's controller asks the coordinator for its workers, and the coordinator sets resources
    aside for it until the run cancels or 180 s after its last ask. A controller that died with its
    trial's driver never cancels: the retried trial's new run (same name) then waited 3 minutes
    for CPUs that sat idle (``benchmarks/faults/faults_elastic.py``). No run of this name is alive when
    its next attempt starts, so every earlier one's reservation is freed here.
    """
    from ray.train.v2._internal.state.state_actor import get_state_actor

    state = get_state_actor()
    if state is None:
        return []
    runs = ray.get(state.get_train_runs.remote(), timeout=30)
    coordinator = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    released = [f"train-{run.id}" for run in runs.values() if run.name == run_name]
    ray.get([coordinator.cancel_request.remote(requester) for requester in released], timeout=30)
    return released


def pin_autoscaling_coordinator(timeout_s: float = 10.0) -> None:
    """Create Ray's autoscaling coordinator on a driver node, replacing one whose node is gone.

    Every elastic Ray Train run sends its resource requests to one named, detached actor that
    Ray creates with a hard affinity to the node of whoever asks first. Created on a worker node
    that is later lost, it can never be scheduled again, and every later elastic run waits
    forever for workers it never asks for (``benchmarks/faults/faults_elastic.py``). Called before
    anything else asks for it: an existing coordinator that does not answer is killed and
    created again here, on a driver node.
    """
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator)

    try:
        existing = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    except ValueError:
        existing = None
    if existing is not None:
        try:
            ray.get(existing.__ray_ready__.remote(), timeout=timeout_s)
            return
        except Exception:  # unschedulable (its node is gone) or dead: replace it
            ray.kill(existing, no_restart=True)
            _wait_until(lambda: not _actor_named("AutoscalingCoordinator", "AutoscalingCoordinator"), timeout_s)

    @ray.remote(num_cpus=0)
    def create() -> None:
        ray.get(get_or_create_autoscaling_coordinator().__ray_ready__.remote())

    # "DEFAULT": out of the calling trial's placement group (Tune captures its tasks there)
    ray.get(create.options(resources=driver_resources(), scheduling_strategy="DEFAULT").remote(), timeout=60)


def _actor_named(name: str, namespace: str) -> bool:
    try:
        ray.get_actor(name, namespace=namespace)
        return True
    except ValueError:
        return False


def _wait_until(predicate: Any, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline and not predicate():
        time.sleep(0.2)


# -- placement groups of finished runs --------------------------------------------------------------

GROUPS_FILE = "placement_groups.txt"  # in a Ray Train run's directory: every worker group's, one id a line


def remove_left_groups(run_dir: str) -> list[str]:
    """Before a Ray Train run (re)starts: remove the placement groups its earlier attempts created
    that still hold resources. No attempt of the run is alive then, so each is a leak: one whose
    controller died with its trial's driver is Ray's ``PlacementGroupCleaner``'s to remove, and
    when that did not (it needs the State API in time), the retried trial waited forever for CPUs
    the dead attempt's group held (``benchmarks/faults/faults_elastic.py``)."""
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    from jigclu import storage

    path = storage.join(run_dir, GROUPS_FILE)
    if not storage.is_file(path):
        return []
    table = ray.util.placement_group_table()
    removed = []
    for pg_id in {line.strip() for line in storage.read_text(path).splitlines() if line.strip()}:
        if table.get(pg_id, {}).get("state") in ("CREATED", "PENDING", "RESCHEDULING"):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
            removed.append(pg_id)
    return removed


class WorkerGroupJanitor(ControllerCallback, WorkerGroupCallback):
    """Removes every placement group its Ray Train controller created once it is no longer used.

    Ray Train removes a worker group's placement group inside ``WorkerGroup.shutdown``, after the
    shutdown callbacks and the workers' own shutdown; when any of those raises (a worker on a
    node that just died, a callback that cannot reach it), the removal is skipped and the group
    keeps its bundles: on a small cluster, the only CPU a later trial could use. The controller
    has one worker group at a time, so when a new one starts, or the controller ends, every group
    it created earlier that still exists is a leak and is removed here. (A controller that dies
    outright is Ray's ``PlacementGroupCleaner``'s, and :func:`remove_left_groups`' at the run's next
    start: each group's id is written to the run's :data:`GROUPS_FILE`.)
    """

    def __init__(self, run_dir: str | None = None) -> None:
        self._groups: list[Any] = []
        self.run_dir = run_dir

    def after_worker_group_start(self, worker_group: Any) -> None:
        pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
        self._groups.append(pg)
        if self.run_dir is not None:
            from jigclu import storage

            try:
                storage.append_line(storage.join(self.run_dir, GROUPS_FILE), pg.id.hex())
            except Exception:  # best effort: never fail a run over its cleanup
                pass

    def before_worker_group_start(self, worker_group_context: Any) -> None:
        self._sweep()

    async def before_controller_shutdown(self) -> None:
        self._sweep()

    def after_controller_finish(self, result: Any) -> None:
        self._sweep()

    def before_controller_abort(self) -> None:
        self._sweep()

    def _sweep(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for pg in self._groups:
            try:
                if ray.util.placement_group_table(pg).get("state") not in ("REMOVED", None):
                    remove_placement_group(pg)
                    logging.getLogger("jigclu").warning("removed a placement group Ray Train left behind: %s",
                                                        pg.id.hex())
            except Exception:  # best effort: never fail a run over its cleanup
                continue
        self._groups = [pg for pg in self._groups if _state(pg) not in ("REMOVED", None)]


def _state(pg: Any) -> str | None:
    try:
        return ray.util.placement_group_table(pg).get("state")
    except Exception:
        return None


class FreshNodesAfterFailure(ControllerCallback):
    """After a worker group fails, has Ray's autoscaling coordinator look at the cluster's nodes again.

    An elastic run picks its next size from what the coordinator reserves for it, and the
    coordinator refreshes its view of the nodes every 20 s. After a node is lost the run kept
    asking for the old size, waiting ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` per try for a
    placement group the dead node could never give (15 s on the 3-node test cluster,
    ``tests/test_elastic.py``). Asked here to recompute once the group fails, it answers with the
    nodes that are left.
    """

    def __init__(self) -> None:
        self._requester: str | None = None

    def after_controller_start(self, train_run_context: Any) -> None:
        self._requester = f"train-{train_run_context.run_id}"  # Ray Train's scaling policy's id

    def before_controller_execute_failure_decision(self, failure_decision: Any) -> None:
        if self._requester is None:
            return
        try:
            coordinator = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
            ray.get(coordinator.get_reserved_resources.remote(self._requester, recompute=True), timeout=10)
        except Exception:  # best effort: the coordinator's own 20 s refresh still comes
            pass
