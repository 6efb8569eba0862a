"""The zoo's timers watch the machine's load as the chain's benchmark does (issue 16): a batch size timed
while another tenant took the CPU is timed again and, still contended, flagged in the metrics and named
in the REPORT."""

from __future__ import annotations

import pytest
import torch

from edgecompress import EdgecompressError
from edgecompress.bench import contention
from edgecompress.bench.contention import LoadPolicy, contention_block
from edgecompress.config import parse_settings
from edgecompress.zoo import measure
from edgecompress.zoo import report as zoo_report
from edgecompress.zoo.params import ZooPipelineParams
from test_bench import FakeMachine
from test_zoo_report import metrics


def test_a_contended_batch_size_is_timed_again_then_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = FakeMachine([0.8, 0.0, 0.8, 0.8])  # batch 1: busy then quiet; batch 8: busy every time
    timed = []

    def fake_sweep(predict, images, *, batch_sizes, **_):
        (b,) = batch_sizes
        timed.append(b)
        machine.run()
        return {"latency_ms": {str(b): {"median": 1.0, "iqr": 0.0}}, "timed_calls": {str(b): 3}}
    monkeypatch.setattr(measure, "latency_sweep", fake_sweep)
    monkeypatch.setattr(contention.time, "sleep", lambda s: None)  # wait_for_quiet: no real waiting in a test
    how = measure.Measurement(batch_sizes=(1, 8), load=LoadPolicy(0.25, 1, 0, sources=machine.sources()))
    result = measure.latency_at_batch_sizes(lambda x: x, torch.zeros(1, 3, 4, 4), how, label="m")
    assert timed == [1, 1, 8, 8]  # the contended batch size again, not the whole sweep
    assert set(result["latency_ms"]) == {"1", "8"} and result["timed_calls"] == {"1": 3, "8": 3}
    assert result["load"]["1"]["contended"] is False and result["load"]["1"]["attempts"] == 2
    assert result["load"]["8"]["contended"] is True and result["load"]["8"]["attempts"] == 2
    assert result["load"]["8"]["other_cpu_cores"] == pytest.approx(0.8)
    # what zoo_benchmark writes: the policy and the flagged timings by "<arch> b<batch>"
    assert contention_block(how.load, {"mobilenet_v2": result}) == {
        "max_load": 0.25, "retries": 1, "wait_s": 0, "contended": ["mobilenet_v2 b8"]}
    unwatched = measure.latency_at_batch_sizes(lambda x: x, torch.zeros(1, 3, 4, 4), measure.Measurement((1,)))
    assert "load" not in unwatched and timed[-1] == 1  # the default policy watches nothing


def flagged_metrics() -> tuple[dict, dict]:
    zoo, quant = metrics()
    zoo["contention"] = {"max_load": 0.25, "retries": 2, "wait_s": 30, "contended": []}
    record = {"other_cpu_cores": 0.9, "steal_cores": 0.0, "load_average_1m": 2.1, "seconds": 1.0,
              "contended": True, "attempts": 3}
    quant["models"]["mobilenet_v2"]["static"]["x86"]["load"] = {"8": record}
    quant["contention"] = contention_block(LoadPolicy(0.25, 2, 30), zoo_report.quantize_timings(quant["models"]))
    return zoo, quant


def test_the_report_names_the_flagged_timing() -> None:
    zoo, quant = flagged_metrics()
    assert quant["contention"]["contended"] == ["mobilenet_v2 fx_x86 b8"]
    text = zoo_report.render_report(zoo, quant, {})
    assert ("**Under contention** (> 0.25 cores of other processes or stolen CPU): `zoo_quantize mobilenet_v2 "
            "fx_x86 b8` (0.9 cores other, 0.0 stolen, 3 attempts). Their latencies are not comparable") in text
    del quant["models"]["mobilenet_v2"]["static"]["x86"]["load"]
    assert "Every timing was measured on a quiet machine (other processes and stolen CPU ≤ 0.25 cores)." in \
        zoo_report.render_report(zoo, quant, {})
    for block in (zoo, quant):
        block["contention"]["max_load"] = None
    assert "Contention was not monitored (zoo.max_load: null)." in zoo_report.render_report(zoo, quant, {})
    del zoo["contention"], quant["contention"]  # metrics written before the load was recorded
    assert "ontention" not in zoo_report.render_report(zoo, quant, {})


def test_zoo_load_params_are_validated() -> None:
    params = parse_settings(ZooPipelineParams, {"zoo": {"max_load": None, "retries": 0, "wait_s": 0}}).zoo
    assert measure.Measurement.from_params(params).load == LoadPolicy(None, 0, 0)
    assert measure.Measurement.from_params(ZooPipelineParams().zoo).load == LoadPolicy(0.25, 2, 30.0)
    for key, value, message in (("max_load", 0, "zoo.max_load=0 is invalid: must be null or cores > 0"),
                                ("retries", -1, "zoo.retries=-1 is invalid: must be an integer >= 0"),
                                ("wait_s", 7200, "zoo.wait_s=7200 is invalid: must be seconds in [0, 3600]")):
        with pytest.raises(EdgecompressError) as err:
            parse_settings(ZooPipelineParams, {"zoo": {key: value}})
        assert str(err.value).startswith(message) and "\n" not in str(err.value)
