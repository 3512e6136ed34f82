"""`sae import` of a file that is not a state dict: one line, the reason, none of torch.load's advice."""

from __future__ import annotations

import datetime
import pickle

import pytest
import torch


def _random_bytes(path):
    path.write_bytes(bytes((i * 73 + 11) % 256 for i in range(5000)))


def _text(path):
    path.write_text("not a checkpoint at all\n")


def _empty(path):
    path.write_bytes(b"")


def _pickled_date(path):
    path.write_bytes(pickle.dumps({"when": datetime.date(2020, 1, 1)}))


def _saved_date(path):
    torch.save({"W_enc": torch.zeros(2), "when": datetime.date(2020, 1, 1)}, path)


def _cut_zip(path):
    torch.save({"W_enc": torch.zeros(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:300])


GARBAGE = {
    "random bytes": (_random_bytes, "not a PyTorch file of tensors only: Unsupported operand"),
    "text": (_text, "not a PyTorch file of tensors only: Unsupported operand"),
    "empty": (_empty, "the file ends early: empty or cut short"),
    "pickled date": (_pickled_date, "not a PyTorch file of tensors only: Unsupported operand"),
    "torch.save of a date": (_saved_date, "not a PyTorch file of tensors only: Unsupported global: GLOBAL "
                                          "datetime.date was not an allowed global by default"),
    "cut torch file": (_cut_zip, "PytorchStreamReader failed"),
}


@pytest.mark.parametrize("case", GARBAGE)
def test_a_garbage_pt_is_one_line_without_torch_advice(case, workspace, cli, tmp_path):
    make, reason = GARBAGE[case]
    path = tmp_path / "ae_normalized.pt"
    make(path)
    result = cli("sae", "import", path, "--format", "interplm", "--name", "g", "--workspace", workspace.root)
    assert result.exit_code == 2
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(f"error: {path} is not a readable torch state dict ({reason}")
    assert line.endswith(").")
    for advice in ("Check the documentation", "weights_only", "pytorch.org", "Please file an issue"):
        assert advice not in line
    assert cli("sae", "list", "--workspace", workspace.root, "--json").json() == []
