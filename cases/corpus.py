"""The regression corpus: one JSON case file per known bug, each with a ``why`` sentence,
replayed by the gate against every selected kernel that implements the case's op."""
from __future__ import annotations

from pathlib import Path

from qkcheck.cases.case import Case, CaseError

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"


def load_corpus(directory: Path = CORPUS_DIR) -> list[Case]:
    cases = []
    for path in sorted(directory.glob("*.json")):
        case = Case.load(path)
        if not case.why:
            raise CaseError(f"{path}: corpus cases need a 'why' sentence saying which regression they guard against")
        cases.append(case)
    return cases
