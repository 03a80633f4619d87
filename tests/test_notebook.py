"""docs/walkthrough.ipynb: it runs top to bottom (with its small settings), and the committed
copy carries the outputs and figures of a full run, so it reads on a repository page."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "walkthrough.ipynb"


def test_the_walkthrough_runs_top_to_bottom(monkeypatch, tmp_path):
    """Every cell runs without an error, the proofs inside it (assert_close) included."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    monkeypatch.setenv("WAVENET_NOTEBOOK", "small")  # the kernel inherits the environment
    monkeypatch.setenv("TMPDIR", str(tmp_path))      # its run directories go here
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "settings: small" in text
    assert "all 12 gradients agree to 1e-12" in text
    for kind in ("conv", "wavenet", "lstm", "gru", "transformer"):
        assert any(line.startswith(kind) for line in text.splitlines()), kind
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4


def test_the_committed_notebook_holds_a_full_run():
    """Executed in order with the full settings, no errors, every figure in place."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for o in outputs)
    assert "settings: full" in text and "block 64" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4
