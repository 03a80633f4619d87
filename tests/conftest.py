from pathlib import Path

import pytest

from wavenet.data import Vocab, load_words

NAMES = Path(__file__).resolve().parent.parent / "data" / "names.txt"


@pytest.fixture(scope="session")
def names():
    return load_words(NAMES)


@pytest.fixture(scope="session")
def vocab(names):
    return Vocab.from_words(names)


@pytest.fixture
def tiny_file(tmp_path):
    """A small names file: enough lines for an 80/10/10 split."""
    words = ["emma", "olivia", "ava", "isabella", "sophia", "charlotte", "mia", "amelia", "harper",
             "evelyn", "abigail", "emily", "elizabeth", "mila", "ella", "avery", "sofia", "camila",
             "aria", "scarlett", "victoria", "madison", "luna", "grace", "chloe", "penelope",
             "layla", "riley", "zoey", "nora", "lily", "eleanor", "hannah", "lillian", "addison"]
    path = tmp_path / "tiny.txt"
    path.write_text("\n".join(words) + "\n", encoding="utf-8")
    return path


def randomize_batchnorm(model, generator):
    """Random running statistics and affine parameters, so that a dropped, misplaced or
    mis-transferred BatchNorm changes the output."""
    import torch
    with torch.no_grad():
        for norm in model.norm:
            norm.running_mean.normal_(generator=generator)
            norm.running_var.uniform_(0.3, 3.0, generator=generator)
            norm.weight.normal_(generator=generator)
            norm.bias.normal_(generator=generator)
    return model
