"""The memory measurements the benchmarks quote: the tensor peak against allocations of known size."""

from __future__ import annotations

import torch

from abspo.core.timing import tensor_peak


def test_tensor_peak_is_the_most_that_tensors_held_at_once():
    with tensor_peak() as peak:
        a = torch.zeros(2**20)  # 4 MiB
        b = torch.zeros(2**20)  # 4 MiB: 8 held at once
        del a, b
        c = torch.zeros(3 * 2**19)  # 6 MiB, after the 8 were freed
        del c
        kept = torch.zeros(2**18)  # 1 MiB still held at the end
    assert peak.peak_mib == 8.0 and peak.held_mib == 1.0
    assert peak.allocations == 7, "4 allocations, 3 frees"
    del kept
    with tensor_peak() as peak:
        x = torch.randn(256, 256, requires_grad=True)  # 256 KiB
        (x @ x).sum().backward()  # the product, the gradients of both factors, x.grad: 256 KiB each
    assert 0.75 <= peak.peak_mib <= 1.5, peak


def test_a_report_records_the_machine_it_was_measured_on(tmp_path, capsys):
    import json

    import torch

    from abspo.core.timing import write_report

    path = tmp_path / "deep" / "report.json"
    write_report({"figure": 1.5}, str(path))
    report = json.loads(path.read_text())
    assert report["figure"] == 1.5 and f"written: {path}" in capsys.readouterr().out
    facts = report["machine"]
    assert facts["torch"] == torch.__version__.split("+")[0] or facts["torch"] == torch.__version__
    assert facts["cores"] >= 1 and facts["threads"] == torch.get_num_threads() and facts["cpu"]
    assert facts["avx512_bf16"] in (True, False, None)
    assert facts["memory_gib"] is None or facts["memory_gib"] > 0
