"""The typed verification result serialises to the manifest's strings, as the untyped dicts did."""

import json

from pipeline.verdict import Status, VerifyResult


def test_a_verify_result_records_its_figures_then_status_then_the_joined_reasons_as_plain_json_strings():
    figures = {"quantization": "int8", "top1_agreement": 0.97}
    failed = VerifyResult(figures, ["top-1 agreement 0.97 < 0.98", "reads back as fp32"]).record()
    assert json.dumps(failed) == json.dumps(
        {
            "quantization": "int8",
            "top1_agreement": 0.97,
            "status": "failed_verification",
            "reason": "top-1 agreement 0.97 < 0.98; reads back as fp32",
        }
    )
    ok = json.loads(json.dumps(VerifyResult(figures).record()))
    assert ok == {**figures, "status": "ok"} and ok["status"] == Status.OK and "reason" not in ok
    assert VerifyResult({}, ["no result"], Status.FAILED).record()["status"] == "failed"
