"""The hostile-input corpus of issue 24 (``tests/hostile.py``): for every input kind, one case
of every class runs through the real command line, and must exit 0 with the right output, or
warn about and count the image, or stop with one ``error:`` line; never a traceback, a signal,
a hang, a write outside its run directory or a folder whose files disagree with its manifest.

Label files and option values are also drawn by hypothesis (seeded and bounded, so the suite
stays fast and repeatable). ``bench/fuzz.py --hostile`` runs many more variations.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from fuzzing import check_case, in_process
from hostile import (
    CLASSES,
    GENERATORS,
    RUNNABLE,
    NumericOption,
    numeric_options,
    option_case,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from igcam_cli.datasets import DatasetSpec, load_dataset

SEED = 24
TIMEOUT = 60  # seconds; every case here takes well under one


@pytest.mark.parametrize("kind", GENERATORS)
def test_every_hostile_input_of_a_kind(kind: str, tiny_voc: Path, tmp_path: Path) -> None:
    failures = []
    for index, case in enumerate(GENERATORS[kind](tiny_voc, np.random.default_rng(SEED))):
        result, problems = check_case(case, tmp_path / str(index),
                                      lambda args: in_process(args, TIMEOUT))
        if problems:
            failures.append((case.name, problems, result.stderr[-500:]))
    assert not failures, failures


def test_the_corpus_covers_every_class_of_issue_24(tiny_voc: Path) -> None:
    names = " ".join(case.name for generate in GENERATORS.values()
                     for case in generate(tiny_voc, np.random.default_rng(SEED)))
    for needle in ("Latin-1", "UTF-16", "BOM", "markup", "2 points", "no categories",
                   "one numeric id", "differ in case", "twice", "nan", "inf", "-1",
                   "truncated", "empty", "CRLF", "trailing empty columns", "quoted",
                   "semicolon"):
        assert needle in names, needle


# --- labels files drawn by hypothesis -----------------------------------------------------

IDS = ("p0", "p1", "p2")
LABELS = st.dictionaries(st.sampled_from(IDS), st.sets(st.sampled_from(range(len(CLASSES))),
                                                       max_size=3), min_size=1)


@st.composite
def excel_csv(draw: st.DrawFn) -> tuple[bytes, dict[str, tuple[int, ...]]]:
    """Labels as one of Excel's or a script's CSV dialects write them: BOM, CRLF, a header,
    quotes, trailing empty columns, labels in one field or one column each, names in any
    case, ids with their file extension, a line repeated."""
    labels = draw(LABELS)
    rows = [["image_id", "labels"]] if draw(st.booleans()) else []
    for image_id, classes in labels.items():
        names = [draw(st.sampled_from([n, n.upper(), n.title()])) for n in
                 (CLASSES[c] for c in sorted(classes))]
        name = image_id + draw(st.sampled_from(["", ".jpg", ".JPG"]))
        fields = [";".join(names)] if draw(st.booleans()) else names
        rows.append([name, *fields, *[""] * draw(st.integers(0, 3))])
        if draw(st.booleans()):
            rows.append(rows[-1])
    text = io.StringIO()
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    csv.writer(text, quoting=quoting,
               lineterminator=draw(st.sampled_from(["\n", "\r\n"]))).writerows(rows)
    data = text.getvalue().encode()
    return (b"\xef\xbb\xbf" + data if draw(st.booleans()) else data), {
        k: tuple(sorted(v)) for k, v in labels.items()}


@settings(max_examples=80, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(excel_csv())
def test_excel_labels_read_as_written(tmp_path: Path, tiny_voc: Path,
                                      drawn: tuple[bytes, dict[str, tuple[int, ...]]]) -> None:
    data, wanted = drawn
    photos = tmp_path / "photos"
    if not photos.is_dir():
        photos.mkdir()
        for image_id, image in zip(IDS, sorted((tiny_voc / "JPEGImages").glob("*.jpg")),
                                   strict=False):
            (photos / f"{image_id}.jpg").write_bytes(image.read_bytes())
        (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    (tmp_path / "labels.csv").write_bytes(data)
    dataset = load_dataset(DatasetSpec(images=photos, labels=tmp_path / "labels.csv",
                                       classes=tmp_path / "classes.txt"))
    assert {s.id: s.labels for s in dataset.samples} == {i: wanted.get(i) for i in IDS}


# --- option values drawn by hypothesis ----------------------------------------------------

QUICK = [o for o in numeric_options() if o.command in RUNNABLE]
VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.integers(-(2 ** 70), 2 ** 70).map(str),
                   st.sampled_from(["nan", "inf", "-inf", "1e309", "-0.0", "0x10", "1_000"]))


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


@settings(max_examples=60, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(QUICK), VALUES)
def test_any_option_value_runs_or_is_refused_in_one_line(
        tmp_path_factory: pytest.TempPathFactory, tiny_voc: Path, option: NumericOption,
        value: str) -> None:
    assume(not (option.counts_work() and _number(value) > 1000))  # long by request
    case = option_case(option, value, tiny_voc)
    result, problems = check_case(case, tmp_path_factory.mktemp("option"),
                                  lambda args: in_process(args, TIMEOUT))
    assert not problems, (case.name, problems, result.stderr[-500:])
