# SPDX-License-Identifier: Apache-2.0
"""Forks answer from exactly their fork point while the original keeps
ingesting."""
import os
import subprocess
import sys

from document_stream import process
from statestream import Client
from statestream.testing import ServeProcess

HERE = os.path.dirname(os.path.abspath(__file__))
DOCUMENT = b"".join(f"Paragraph {i}: the river bends north, then east.\n"
                    .encode() for i in range(1500))
QUESTIONS = [(5000, "Where does the river bend?"),
             (20000, "What comes after north?"),
             (60000, "How many paragraphs so far?")]


def test_forks_answer_from_their_fork_point(tmp_path):
    with ServeProcess(data_dir=str(tmp_path / "data")) as server:
        with Client(server.address) as c:
            answers, final = process(c, "doc", DOCUMENT, QUESTIONS)
            assert final == len(DOCUMENT)
            assert c.session("doc").get().input_offset == len(DOCUMENT)
            assert [a.at_offset for a in answers] == [q[0] for q in QUESTIONS]
            for a in answers:
                fork = c.session(a.fork_id).get()
                assert fork.parent_session_id == "doc"
                assert fork.parent_version == a.version
                # The fork's history: the document up to its fork point,
                # then its own question and answer; not what came later.
                prompt = f"\n\nQuestion: {a.question}\nAnswer:".encode()
                assert fork.input_offset == a.at_offset + len(prompt) + 32
                # A session fed just that prefix answers the same.
                ref_id = f"ref-{a.at_offset}"
                c.create_session(ref_id)
                ref = c.session(ref_id)
                ref.append(DOCUMENT[:a.at_offset])
                r = ref.generate_text(prompt, max_tokens=32, temperature=0)
                assert r.text == a.text


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
