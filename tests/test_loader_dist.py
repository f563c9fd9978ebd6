import json
import subprocess

import pytest

from conftest import PYTHON, REPO


@pytest.mark.parametrize("kind", ["webdataset", "dali"])
def test_two_torchrun_ranks_read_disjoint_shards(id_shards, tmp_path, kind):
    out = tmp_path / "seen.json"
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "scripts" / "loader_rank.py"), str(id_shards), str(out), kind]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = {r["rank"]: r["ids"] for r in json.loads(out.read_text())}
    assert set(seen) == {0, 1}
    a, b = set(seen[0]), set(seen[1])
    assert len(seen[0]) == len(a) == 100 and len(b) == 100, "a rank saw a sample twice within an epoch"
    assert not a & b, f"ranks overlap on {sorted(a & b)[:10]}"
    assert a | b == set(range(200))
