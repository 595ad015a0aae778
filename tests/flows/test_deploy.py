"""flows.deploy: the served deployments are the ones prefect.yaml declares."""

from __future__ import annotations

import yaml

from tests.support import REPO

POOL = "seq2seq-process"


def test_served_deployments_match_prefect_yaml() -> None:
    from flows.deploy import build_deployments

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    served = {d.name: d for d in build_deployments()}
    assert set(served) == {d["name"] for d in spec["deployments"]}
    for entry in spec["deployments"]:
        deployment = served[entry["name"]]
        assert deployment.entrypoint == entry["entrypoint"]
        assert deployment.parameters == entry["parameters"]
        assert [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules] == [
            (s["cron"], s["timezone"]) for s in entry["schedules"]
        ]
        assert entry["work_pool"]["name"] == POOL
        options = deployment.concurrency_options
        assert (deployment.concurrency_limit, options.collision_strategy) == (1, "ENQUEUE")
    nightly, weekly = served["nightly-retrain"], served["weekly-champion-eval"]
    assert nightly.parameters["overrides"] == ["train.init_from=champion"]
    assert nightly.triggers == []
    (trigger,) = weekly.triggers
    assert trigger.expect == {"prefect.flow-run.Completed"}
    assert trigger.match_related.root == {
        "prefect.resource.role": "deployment", "prefect.resource.name": "nightly-retrain"
    }  # fmt: skip
