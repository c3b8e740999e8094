"""Translation data on the shipped real samples: readers, splits, sentencepiece round trip, errors.

The IWSLT14 training file (train.tags) is not available here, so the iwslt14_de_en recipe is run on a
stand-in release folder whose train.tags.de-en.{de,en} are made from the real tst2010-2012 xml documents,
in the train.tags layout (meta lines plus one transcript line per segment). The WMT14 recipe uses the real
newstest2013 as a stand-in training corpus (corpora=[newstest2013]).
"""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from sacremoses import MosesTokenizer

from toolkit.data.indexed_dataset import IndexedDataset
from toolkit.data.parallel_corpus import FileSource, normalize_line, read_segments
from toolkit.data.recipes.translation import (
    IWSLT_SAMPLE,
    Iwslt14Config,
    Iwslt14SampleConfig,
    Wmt14Config,
    preprocess_iwslt14,
    preprocess_iwslt14_sample,
    preprocess_wmt14,
)
from toolkit.data.spm import SpmVocab
from toolkit.errors import DataError

DATA = Path(__file__).resolve().parents[2] / "data"
NEWSTEST2013 = DATA / "wmt14" / "wmt14-newstest2013-de-en-plain.tar.xz"
NEWSTEST2014 = DATA / "wmt14" / "wmt14-newstest2014-deen-full-sgm.tar.xz"
SEGS = {"TED.dev2010": 887, "TEDX.dev2012": 1165, "TED.tst2010": 1565, "TED.tst2011": 1433, "TED.tst2012": 1700}


def config(schema: type, **values: object):
    return OmegaConf.merge(OmegaConf.structured(schema), {"workers": 1, **values})


def xml(folder: Path, xml_set: str, lang: str) -> Path:
    return folder / f"IWSLT14.{xml_set}.de-en.{lang}.xml"


def seg_texts(path: Path) -> list[str]:
    """An independent reading of the <seg> lines (regex over the raw file)."""
    text = path.read_text(encoding="utf-8")
    return [
        s.strip().replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
        for s in re.findall(r'<seg id="\d+">(.*)</seg>', text)
    ]


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped xml files, unpacked."""
    root = tmp_path_factory.mktemp("release")
    with tarfile.open(IWSLT_SAMPLE) as archive:
        archive.extractall(root, filter="data")
    return root / "iwslt14-de-en-devtest"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("out") / "iwslt14_sample"
    preprocess_iwslt14_sample(config(Iwslt14SampleConfig, destdir=str(dest)))
    return dest


def test_normalize_line() -> None:
    assert normalize_line("  Ein\u00a0 Test\t mit ﬁ  ", lowercase=True) == "ein test mit fi"
    assert normalize_line("Ein  Test", lowercase=False, nfkc=False) == "Ein Test"


def test_segment_counts_of_the_shipped_xml(release: Path) -> None:
    for xml_set, count in SEGS.items():
        for lang in ("de", "en"):
            segments = read_segments(xml(release, xml_set, lang))
            assert len(segments) == count
            assert segments == seg_texts(xml(release, xml_set, lang))


def test_sample_split_counts_and_files(sample: Path) -> None:
    meta = json.loads((sample / "meta.json").read_text())
    assert {name: split["pairs"] for name, split in meta["splits"].items()} == {
        "train": 1565 + 1433 + 1700,
        "valid": 1165,
        "test": 887,
    }
    assert (meta["src_lang"], meta["tgt_lang"], meta["vocab_size"], meta["dtype"]) == ("de", "en", 4000, "uint16")
    assert meta["special_ids"] == {"bos": 0, "pad": 1, "eos": 2, "unk": 3}
    for name, split in meta["splits"].items():
        for lang in ("de", "en"):
            ds = IndexedDataset(sample / f"{name}.de-en.{lang}")
            assert len(ds) == split["pairs"]
            assert ds.num_tokens == split["src_tokens" if lang == "de" else "tgt_tokens"]
    assert sorted(p.name for p in sample.iterdir() if p.suffix == ".txt") == [
        "test.de.txt",
        "test.en.txt",
        "valid.de.txt",
        "valid.en.txt",
    ]


def test_sample_references_are_the_lowercased_xml_text(sample: Path, release: Path) -> None:
    segments = seg_texts(xml(release, "TED.dev2010", "en"))
    expected = [" ".join(s.replace("\u2019", "'").lower().split()) for s in segments]
    assert (sample / "test.en.txt").read_text(encoding="utf-8").split("\n")[:-1] == expected
    assert expected[0].startswith("you know, one of the intense pleasures of travel")


def test_round_trip_and_binary_content(sample: Path, release: Path) -> None:
    vocab = SpmVocab(sample / "spm.model")
    assert (len(vocab), vocab.bos, vocab.pad, vocab.eos, vocab.unk) == (4000, 0, 1, 2, 3)
    valid = (sample / "valid.en.txt").read_text(encoding="utf-8").split("\n")[:-1]
    ds = IndexedDataset(sample / "valid.de-en.en")
    for i in (0, 1, 500, len(valid) - 1):
        assert ds[i].tolist() == vocab.encode(valid[i])
    lines = [normalize_line(s, lowercase=True) for s in seg_texts(xml(release, "TED.tst2011", "de"))]
    ids = vocab.encode_batch(lines)
    assert [vocab.decode(x) for x in ids] == lines  # train text: every character is in the vocabulary
    assert vocab.decode([vocab.bos] + ids[0] + [vocab.eos, vocab.pad, vocab.pad]) == lines[0]


def test_sentencepiece_training_is_deterministic(sample: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    preprocess_iwslt14_sample(config(Iwslt14SampleConfig, destdir=str(again), workers=2, chunk_lines=700))
    # spm.model itself records the thread count, so its pieces (spm.vocab) and the datasets are compared
    for name in ("spm.vocab", "train.de-en.de.bin", "train.de-en.de.idx", "test.de-en.en.bin", "valid.en.txt"):
        assert (again / name).read_bytes() == (sample / name).read_bytes(), name


# ---- the full IWSLT14 recipe on a stand-in release ----------------------------------------------------------


def make_train_tags(release: Path, dest: Path, sets: list[str]) -> None:
    """train.tags.de-en.{de,en} from real xml documents: meta lines as in the release, one line per segment."""
    for lang in ("de", "en"):
        lines = []
        for xml_set in sets:
            for line in xml(release, xml_set, lang).read_text(encoding="utf-8").split("\n"):
                if re.match(r"<(url|keywords|talkid|title|description)>", line):
                    lines.append(line)
                elif line.startswith("<seg"):
                    lines.append(re.sub(r"</?seg[^>]*>", "", line))
        (dest / f"train.tags.de-en.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")


def expected_clean(dest: Path) -> tuple[list[str], list[str]]:
    """fairseq's filtering and clean-corpus-n rule, computed independently with sacremoses."""
    sides = []
    for lang in ("de", "en"):
        text = (dest / f"train.tags.de-en.{lang}").read_text(encoding="utf-8").split("\n")[:-1]
        text = [re.sub(r"</?(title|description)>", "", t) for t in text if not re.search("<(url|talkid|keywords)>", t)]
        sides.append([normalize_line(t, lowercase=False) for t in text])
    tok_de, tok_en = MosesTokenizer("de"), MosesTokenizer("en")
    keep = []
    for de, en in zip(*sides):
        a, b = len(tok_de.tokenize(de, escape=False)), len(tok_en.tokenize(en, escape=False))
        if 1 <= a <= 175 and 1 <= b <= 175 and a <= 1.5 * b and b <= 1.5 * a:
            keep.append((de.lower(), en.lower()))
    return [k[0] for k in keep], [k[1] for k in keep]


def test_iwslt14_recipe_on_stand_in_release(release: Path, tmp_path: Path) -> None:
    folder = tmp_path / "de-en"
    shutil.copytree(release, folder)
    make_train_tags(release, folder, ["TED.tst2011", "TED.tst2012"])
    dest = tmp_path / "iwslt14"
    meta = preprocess_iwslt14(config(Iwslt14Config, input=str(folder), destdir=str(dest), vocab_size=1000))
    de, en = expected_clean(folder)
    valid_en = (dest / "valid.en.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert valid_en == en[22::23]  # awk 'NR % 23 == 0'
    assert (dest / "valid.de.txt").read_text(encoding="utf-8").split("\n")[:-1] == de[22::23]
    assert meta["splits"]["train"]["pairs"] == len(en) - len(en) // 23
    assert meta["splits"]["test"]["pairs"] == 6750
    assert meta["cleaning"]["kept"] == len(en)
    test_de = (dest / "test.de.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert test_de[0] == normalize_line(seg_texts(xml(release, "TED.dev2010", "de"))[0], lowercase=True)
    assert test_de[887] == normalize_line(seg_texts(xml(release, "TEDX.dev2012", "de"))[0], lowercase=True)
    assert len(IndexedDataset(dest / "train.de-en.de")) == meta["splits"]["train"]["pairs"]


def test_iwslt14_missing_release_files(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(DataError) as error:
        preprocess_iwslt14(config(Iwslt14Config, input=str(IWSLT_SAMPLE), destdir=str(dest)))
    assert str(error.value) == f"IWSLT14 release {IWSLT_SAMPLE} lacks train.tags.de-en.de, train.tags.de-en.en"
    assert list(tmp_path.iterdir()) == []


def broken_copy(release: Path, tmp_path: Path, xml_set: str, lang: str, edit) -> Path:
    folder = tmp_path / "broken"
    shutil.copytree(release, folder)
    path = xml(folder, xml_set, lang)
    lines = path.read_text(encoding="utf-8").split("\n")
    path.write_text("\n".join(edit(lines)), encoding="utf-8")
    return folder


def run_sample(folder: Path, tmp_path: Path) -> str:
    dest = tmp_path / "out"
    with pytest.raises(DataError) as error:
        preprocess_iwslt14_sample(config(Iwslt14SampleConfig, input=str(folder), destdir=str(dest)))
    assert not dest.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return str(error.value)


def test_malformed_xml_names_file_and_line(release: Path, tmp_path: Path) -> None:
    def cut_seg(lines: list[str]) -> list[str]:
        lines[20] = lines[20][:-10]  # a <seg> line without its closing tag
        return lines

    folder = broken_copy(release, tmp_path, "TED.tst2011", "en", cut_seg)
    message = run_sample(folder, tmp_path)
    path = xml(folder, "TED.tst2011", "en")
    assert message == f"{path}:21: malformed <seg> line (expected <seg id=...>text</seg> on one line)"


def test_truncated_xml(release: Path, tmp_path: Path) -> None:
    folder = broken_copy(release, tmp_path, "TED.dev2010", "de", lambda lines: lines[:100])
    path = xml(folder, "TED.dev2010", "de")
    assert run_sample(folder, tmp_path) == f"{path}:100: file ends inside the <doc> opened on line 4 (truncated?)"


def test_segment_count_mismatch(release: Path, tmp_path: Path) -> None:
    folder = broken_copy(release, tmp_path, "TEDX.dev2012", "en", lambda lines: lines[:30] + lines[31:])
    message = run_sample(folder, tmp_path)
    assert message == (
        f"{xml(folder, 'TEDX.dev2012', 'de')} has 1165 segments but {xml(folder, 'TEDX.dev2012', 'en')} has 1164; "
        "aligned files need equal counts"
    )


# ---- WMT14 ------------------------------------------------------------------------------------------------------


def wmt_config(dest: Path, train: str = str(NEWSTEST2013), **values: object):
    defaults = dict(corpora=["newstest2013"], valid=str(NEWSTEST2013), test=str(NEWSTEST2014), vocab_size=2000)
    return config(Wmt14Config, train=[train], destdir=str(dest), **{**defaults, **values})


def test_wmt14_recipe_with_newstest2013_as_stand_in_train(tmp_path: Path) -> None:
    dest = tmp_path / "wmt"
    meta = preprocess_wmt14(wmt_config(dest))
    with tarfile.open(NEWSTEST2013) as archive:
        en, de = (
            archive.extractfile(f"newstest2013-plain/newstest2013.{l}").read().decode().split("\n")[:-1]
            for l in ("en", "de")
        )
    en, de = [normalize_line(x, False) for x in en], [normalize_line(x, False) for x in de]
    kept = [
        (a, b)
        for a, b in zip(en, de)
        if 1 <= len(a.split()) <= 250
        and 1 <= len(b.split()) <= 250
        and len(a.split()) <= 1.5 * len(b.split())
        and len(b.split()) <= 1.5 * len(a.split())
    ]
    assert {k: v["pairs"] for k, v in meta["splits"].items()} == {"train": len(kept), "valid": 3000, "test": 3003}
    assert (meta["src_lang"], meta["tgt_lang"]) == ("en", "de")
    vocab = SpmVocab(dest / "spm.model")
    train_de = IndexedDataset(dest / "train.en-de.de")
    assert vocab.decode(train_de[len(kept) - 1]) == kept[-1][1]
    first_test = (dest / "test.de.txt").read_text(encoding="utf-8").split("\n")[0]
    assert first_test == "Gutach: Noch mehr Sicherheit für Fußgänger"
    assert (dest / "valid.en.txt").read_text(encoding="utf-8").split("\n")[0] == (
        "A Republican strategy to counter the re-election of Obama"
    )


def test_wmt14_line_count_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    with tarfile.open(NEWSTEST2013) as archive:
        for lang, cut in (("en", 3000), ("de", 2999)):
            lines = archive.extractfile(f"newstest2013-plain/newstest2013.{lang}").read().split(b"\n")
            (folder / f"newstest2013.{lang}").write_bytes(b"\n".join(lines[:cut]) + b"\n")
    dest = tmp_path / "wmt"
    with pytest.raises(DataError) as error:
        preprocess_wmt14(wmt_config(dest, train=str(folder)))
    assert str(error.value) == (
        f"{folder / 'newstest2013.en'} has 3000 lines but {folder / 'newstest2013.de'} has 2999; "
        "a parallel corpus needs equal counts"
    )
    assert not dest.exists()


def test_wmt14_missing_corpus_and_bad_checksum(tmp_path: Path) -> None:
    dest = tmp_path / "wmt"
    with pytest.raises(DataError) as error:
        preprocess_wmt14(wmt_config(dest, corpora=["newstest2013", "europarl-v7.de-en"]))
    assert str(error.value) == (
        f"training corpora not found: europarl-v7.de-en.en, europarl-v7.de-en.de (searched {NEWSTEST2013})"
    )
    with pytest.raises(DataError, match="sha256 mismatch: expected 00ff, got e824adaf"):
        preprocess_wmt14(wmt_config(dest, sha256=[f"{NEWSTEST2013.name}:00ff"]))
    assert not dest.exists()


def test_inputs_given_as_url_are_fetched_and_checked(tmp_path: Path) -> None:
    url = IWSLT_SAMPLE.as_uri()  # file:// goes through the same download path as http(s), offline
    digest = "1751cd4391fa8c0b629a0124952d9ef6f7e4d5bc20ff47898b99e742edc201d5"
    source = FileSource(url, tmp_path / "cache", tmp_path / "scratch", digest)
    assert source.kind == "tar" and source.path.parent.parent == tmp_path / "cache"
    files = source.require(["IWSLT14.TED.dev2010.de-en.en.xml"], "IWSLT14 release")
    assert len(read_segments(files["IWSLT14.TED.dev2010.de-en.en.xml"])) == 887
    with pytest.raises(DataError, match=f"sha256 mismatch: expected {'0' * 64}, got {digest}"):
        FileSource(url, tmp_path / "cache2", tmp_path / "scratch", "0" * 64)
    assert not list((tmp_path / "cache2").rglob("*.xz"))
