# SPDX-License-Identifier: Apache-2.0
"""Forks answer from exactly their fork point while the original keeps
ingesting."""
import os
import subprocess
import sys

import pytest

from document_stream import char_boundary, process, prompt_for
from statestream import Client
from statestream.testing import ServeProcess

HERE = os.path.dirname(os.path.abspath(__file__))
DOCUMENT = b"".join(f"Paragraph {i}: the river bends north, then east.\n"
                    .encode() for i in range(1500))
QUESTIONS = [(5000, "Where does the river bend?"),
             (20000, "What comes after north?"),
             (60000, "How many paragraphs so far?")]
# Two-, three- and four-byte characters.
UNICODE = "".join(f"Absatz {i}: Fluß → Nord, dann Ost 🌊.\n"
                  for i in range(300)).encode()


def reference_answer(c, ref_id, prefix, question, max_tokens=32):
    """What a session fed just `prefix`, without a flush, answers: Generate
    tokenizes its pending tail together with the prompt, like the fork's."""
    c.create_session(ref_id)
    ref = c.session(ref_id)
    if prefix:
        ref.append(prefix, flush=False)
    return ref.generate_text(prompt_for(question), max_tokens=max_tokens,
                             temperature=0).text


def session_ids(c):
    return sorted(s.session_id for s in c.list_sessions())


def test_forks_answer_from_their_fork_point(tmp_path):
    with ServeProcess(data_dir=str(tmp_path / "data")) as server:
        with Client(server.address) as c:
            answers, final = process(c, "doc", DOCUMENT, QUESTIONS,
                                     keep_forks=True)
            assert final == len(DOCUMENT)
            assert c.session("doc").get().input_offset == len(DOCUMENT)
            assert [a.at_offset for a in answers] == [q[0] for q in QUESTIONS]
            for a in answers:
                fork = c.session(a.fork_id).get()
                assert fork.parent_session_id == "doc"
                assert fork.parent_version == a.version
                # The fork's history: the document up to its fork point,
                # then its own question and answer; not what came later.
                prompt = prompt_for(a.question).encode()
                assert fork.input_offset == a.at_offset + len(prompt) + 32
                assert a.text == reference_answer(
                    c, f"ref-{a.at_offset}", DOCUMENT[:a.at_offset],
                    a.question)


def test_unicode_offsets_move_to_a_character_boundary(tmp_path):
    # Offsets inside a multi-byte character: "ß" (2 bytes), "→" (3) and
    # "🌊" (4 bytes).
    mid = [UNICODE.index("ß".encode()) + 1,
           UNICODE.index("→".encode(), 3000) + 2,
           UNICODE.index("🌊".encode(), 9000) + 3]
    questions = [(m, f"Question {i}?") for i, m in enumerate(mid)]
    with ServeProcess(data_dir=str(tmp_path / "data")) as server:
        with Client(server.address) as c:
            answers, final = process(c, "udoc", UNICODE, questions,
                                     chunk_bytes=1000)
            assert final == len(UNICODE)
            for a, m in zip(answers, mid):
                assert a.at_offset == char_boundary(UNICODE, m) < m
                UNICODE[:a.at_offset].decode()  # ends on a boundary
                assert a.text == reference_answer(
                    c, f"ref-{a.at_offset}", UNICODE[:a.at_offset],
                    a.question)
            # The forks were deleted after answering.
            assert session_ids(c) == sorted(
                ["udoc"] + [f"ref-{a.at_offset}" for a in answers])
            # The original is the document, tokenized as a whole.
            c.create_session("whole")
            c.session("whole").append(UNICODE)
            probe = "Absatz 300:"
            assert (c.session("udoc").score(probe).sum_logprob ==
                    c.session("whole").score(probe).sum_logprob)


def test_resumes_an_interrupted_ingest(tmp_path):
    with ServeProcess(data_dir=str(tmp_path / "data")) as server:
        with Client(server.address) as c:
            # A first run stopped after 30000 bytes (no flush there).
            c.create_session("doc")
            c.session("doc").append(DOCUMENT[:30000], flush=False)
            answers, final = process(c, "doc", DOCUMENT,
                                     [(30000, "Here?"), (40000, "There?")])
            assert final == len(DOCUMENT)
            assert [a.at_offset for a in answers] == [30000, 40000]
            assert answers[1].text == reference_answer(
                c, "ref", DOCUMENT[:40000], "There?")
            c.create_session("whole")
            c.session("whole").append(DOCUMENT)
            assert (c.session("doc").score("Paragraph").sum_logprob ==
                    c.session("whole").score("Paragraph").sum_logprob)
            # A question before the resume point needs a kept version
            # ending exactly there.
            with pytest.raises(ValueError, match="keeps no version"):
                process(c, "doc", DOCUMENT, [(1234, "Too late?")])


def test_resumes_after_input_applied_but_not_committed(tmp_path):
    # Another run's writer has applied 30000 bytes and committed none of
    # them (no commit policy on this server; it is still attached): the
    # rerun commits that input before going on from it, and ends where a
    # whole ingest does.
    with ServeProcess(data_dir=str(tmp_path / "data"),
                      extra_args=["--checkpoint-tokens=100000000",
                                  "--checkpoint-interval=10000h"]) as server:
        with Client(server.address) as c:
            c.create_session("doc")
            s = c.session("doc")
            other = s.writer()
            other.write(DOCUMENT[:30000])
            assert other.sync().committed_input_offset == 0
            info = s.get()
            assert (info.committed_input_offset, info.input_offset) == (
                0, 30000)
            answers, final = process(c, "doc", DOCUMENT, [(40000, "There?")])
            del other  # superseded by the rerun's writer
            assert final == len(DOCUMENT)
            assert answers[0].text == reference_answer(
                c, "ref", DOCUMENT[:40000], "There?")
            c.create_session("whole")
            c.session("whole").append(DOCUMENT)
            assert (s.score("Paragraph").sum_logprob ==
                    c.session("whole").score("Paragraph").sum_logprob)


def test_rejects_offsets_outside_the_document(tmp_path):
    with ServeProcess(data_dir=str(tmp_path / "data")) as server:
        with Client(server.address) as c:
            for offset in (len(DOCUMENT) + 1, -1):
                with pytest.raises(ValueError, match="outside the document"):
                    process(c, "doc", DOCUMENT, [(offset, "Beyond?")])
            assert session_ids(c) == []  # rejected before any call
            # The very end is a valid fork point.
            answers, final = process(c, "doc", DOCUMENT[:500],
                                     [(500, "The end?")])
            assert final == 500 and answers[0].at_offset == 500


def test_cli_runs(tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_bytes(DOCUMENT[:8000])
    with ServeProcess(data_dir=str(tmp_path / "data")) as server:
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "document_stream.py"),
             "--target", server.address, "--question", "3000:Why?", str(doc)],
            capture_output=True, text=True, timeout=120, check=True)
        assert out.stdout.startswith("@3000 (v")
        assert "[ingested 8000 bytes]" in out.stderr
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "document_stream.py"),
             "--target", server.address, "--question", "9000:Past the end?",
             str(doc)],
            capture_output=True, text=True, timeout=120)
        assert out.returncode == 2
        assert "outside the document" in out.stderr
