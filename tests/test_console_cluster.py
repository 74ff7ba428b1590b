"""The console's cluster panel and the /metrics ``process`` label (the real multi-process view is in
tests/test_cluster_processes.py)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from bot.cluster.store import ClusterStore, ProcessInfo
from bot.console import Console, Metrics, console_mount
from tests.test_console import make_services


def test_every_sample_carries_the_process_label_and_the_registry_keeps_its_own() -> None:
    metrics = Metrics(process=False, process_label="box-1")
    metrics.turn("text", "answered", wait=0.25)
    families = list(text_string_to_metric_families(metrics.render().decode()))
    samples = [s for f in families for s in f.samples]
    assert samples and all(s.labels.get("process") == "box-1" for s in samples)
    turns = [s for s in samples if s.name == "voicebot_turns_total" and s.labels["channel"] == "text"
             and s.labels["outcome"] == "answered"]
    assert [s.value for s in turns] == [1.0]
    # The registry itself is unchanged: code reading samples by their labels still finds them.
    assert metrics.registry.get_sample_value("voicebot_turns_total", {"channel": "text", "outcome": "answered"}) == 1
    assert 'process="' not in Metrics(process=False).render().decode()


async def test_the_panel_lists_every_process_with_who_is_down(tmp_path) -> None:
    services = await make_services(data_dir=tmp_path, cluster_heartbeat=5.0, cluster_down_after=3)
    try:
        assert services.store is not None
        cluster = ClusterStore(services.store, heartbeat=5.0, down_after=3)
        await cluster.migrate()
        for n, shards in ((1, [0, 1]), (2, [2, 3])):
            info = ProcessInfo(f"far{n}:10{n}:x", f"worker-{n}", f"far{n}", 100 + n, "1.0")
            await cluster.register(info)
            await cluster.claim(info.process_id, shards, 4)
        await cluster.beat("far1:101:x", guilds=7, voice_sessions=2)
        await services.store.execute("UPDATE cluster_processes SET beat_at = beat_at - 60 WHERE name = 'worker-2'")
        console, _ = console_mount(services, process_label="worker-1")
        console.process_id = "far1:101:x"
        assert isinstance(console, Console) and console.metrics.process_label == "worker-1"
        await console.read_cluster(force=True)
        panel = console.snapshot()["cluster"]
        rows = {p["name"]: p for p in panel["processes"]}
        assert (rows["worker-1"]["state"], rows["worker-1"]["shards"], rows["worker-1"]["guilds"],
                rows["worker-1"]["voice"], rows["worker-1"]["this"]) == ("up", "0-1", 7, 2, True)
        assert rows["worker-2"]["state"] == "down" and rows["worker-2"]["beat_age"] >= 60
        assert panel["down"] == 1 and panel["stale"] is False
        # The database going away keeps the last rows and says so.
        await services.store.close()
        await console.read_cluster(force=True)
        assert console.snapshot()["cluster"]["stale"] is True and len(console.snapshot()["cluster"]["processes"]) == 2
        await console.aclose()
    finally:
        await services.aclose()
