#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Streaming document processing with forks.

A large document is ingested into one session, part by part. After each part
the session is checkpointed and forked; a worker thread answers that part's
question from its own fork while the original keeps ingesting. Forks are
copies of a committed version: an answer depends only on the text before
its fork point, whatever the original does meanwhile.

    python3 document_stream.py --target 127.0.0.1:7700 book.txt \
        --question 2000:"Who is the narrator?" --question 8000:"Where are we?"
"""
import argparse
import concurrent.futures
import sys
from dataclasses import dataclass
from typing import List, Tuple

from statestream import Client


@dataclass
class Answer:
    question: str
    at_offset: int  # bytes of the document read before the fork
    version: int  # the original's version the fork was made from
    fork_id: str
    text: str


def process(client: Client, session_id: str, document: bytes,
            questions: List[Tuple[int, str]], chunk_bytes: int = 4096,
            max_tokens: int = 32) -> Tuple[List[Answer], int]:
    """Ingests `document`; at each (offset, question) forks and answers in
    the background. Returns the answers (in question order) and the final
    input_offset of the original."""
    client.create_session(session_id)
    doc = client.session(session_id)
    pending = sorted(questions)
    futures = []

    def answer(fork, question, offset, version):
        r = fork.generate_text(f"\n\nQuestion: {question}\nAnswer:",
                               max_tokens=max_tokens, temperature=0,
                               commit=True)
        return Answer(question, offset, version, fork.id, r.text)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        with doc.writer() as w:
            pos = 0
            while pos < len(document) or pending:
                stop = len(document)
                if pending:
                    stop = min(stop, pending[0][0])
                while pos < stop:
                    n = min(chunk_bytes, stop - pos)
                    w.write(document[pos:pos + n])
                    pos += n
                while pending and pending[0][0] <= pos:
                    offset, question = pending.pop(0)
                    w.flush()
                    ack = w.checkpoint()
                    fork = doc.fork(ack.version)
                    futures.append(pool.submit(answer, fork, question, pos,
                                               ack.version))
                if pos >= len(document) and not pending:
                    break
            w.flush()
            final = w.close()
        answers = [f.result() for f in futures]
    return answers, final.input_offset


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="127.0.0.1:7700")
    p.add_argument("--session", default="document")
    p.add_argument("--question", action="append", default=[],
                   help="OFFSET:QUESTION (asked once OFFSET bytes are read)")
    p.add_argument("file")
    args = p.parse_args()
    with open(args.file, "rb") as f:
        document = f.read()
    questions = []
    for q in args.question:
        offset, _, text = q.partition(":")
        questions.append((int(offset), text))
    with Client(args.target) as client:
        answers, final = process(client, args.session, document, questions)
    for a in answers:
        print(f"@{a.at_offset} (v{a.version}, fork {a.fork_id}) "
              f"{a.question} -> {a.text!r}")
    print(f"[ingested {final} bytes]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
