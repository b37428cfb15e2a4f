#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Streaming document processing with forks.

A large document is ingested into one session, part by part. At each
question's offset the session is checkpointed and forked; a worker thread
answers that question from its own fork while the original keeps ingesting.
Forks are copies of a committed version: an answer depends only on the text
before its fork point, whatever the original does meanwhile.

The original is never flushed at a fork point (a flush would end a token
there and change how a real tokenizer splits the document): the fork keeps
the tokenizer's undecided tail, and its Generate tokenizes that tail
together with the question. Fork points are moved back to the previous UTF-8
character boundary so that no fork ends inside a character. The session id
names the document's ingest: a rerun after an interruption finds the
session and continues from its input_offset instead of starting over.

    python3 document_stream.py --target 127.0.0.1:7700 book.txt \
        --question 2000:"Who is the narrator?" --question 8000:"Where are we?"
"""
import argparse
import concurrent.futures
import sys
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from statestream import Client, StatestreamError


@dataclass
class Answer:
    question: str
    at_offset: int  # bytes of the document read before the fork
    version: int  # the original's version the fork was made from
    fork_id: str  # deleted after answering unless keep_forks
    text: str


def prompt_for(question: str) -> str:
    return f"\n\nQuestion: {question}\nAnswer:"


def char_boundary(document: bytes, offset: int) -> int:
    """The largest UTF-8 character boundary of `document` at or before
    `offset` (0 <= offset <= len(document))."""
    while 0 < offset < len(document) and (document[offset] & 0xC0) == 0x80:
        offset -= 1
    return offset


def process(client: Client, session_id: str, document: bytes,
            questions: Sequence[Tuple[int, str]], chunk_bytes: int = 4096,
            max_tokens: int = 32,
            keep_forks: bool = False) -> Tuple[List[Answer], int]:
    """Ingests `document` into session `session_id` (created if missing; if
    it exists, ingestion resumes at its input_offset, which must be within
    the document). At each (offset, question) forks and answers in the
    background; offsets must lie in [0, len(document)] (else ValueError,
    before anything is sent) and are moved back to a UTF-8 character
    boundary. Returns the answers sorted by that fork offset (questions at
    the same offset in the order given) and the final input_offset of the
    original.

    Forks are deleted once answered and their Generate does not commit;
    with keep_forks=True they stay, holding the committed question and
    answer. A question before the resume point can only be answered from a
    kept version of the session ending exactly there (else ValueError)."""
    for offset, _ in questions:
        if not 0 <= offset <= len(document):
            raise ValueError(f"question offset {offset} is outside the "
                             f"document (0..{len(document)} bytes)")
    asks = sorted(((char_boundary(document, offset), i, question)
                   for i, (offset, question) in enumerate(questions)))

    try:  # get-or-create: a rerun resumes the ingest
        client.create_session(session_id)
    except StatestreamError as e:
        if e.reason != "SESSION_EXISTS":
            raise
    doc = client.session(session_id)
    info = doc.get()
    start = info.input_offset
    if info.committed_input_offset < start:
        # An interrupted run left input applied but not committed: commit
        # it before going on from it, or, if the worker holding it is gone
        # (the session is back at its committed offset), go on from there.
        # (Going on from an applied offset without a commit would leave a
        # gap if that worker died now.)
        try:
            with doc.writer(start_offset=start) as w:
                w.checkpoint()
        except StatestreamError as e:
            if e.reason != "POSITION_MISMATCH":
                raise
            start = doc.get().input_offset
    if start > len(document):
        raise ValueError(f"session {session_id} already holds {start} input "
                         f"units, more than the document's {len(document)}")
    earlier = {}  # offset before the resume point -> a kept version there
    if asks and asks[0][0] < start:
        kept = {v.input_offset: v.version for v in doc.versions()}
        for offset, _, _ in asks:
            if offset < start:
                if offset not in kept:
                    raise ValueError(
                        f"question offset {offset}: session {session_id} "
                        f"is already at {start} and keeps no version there")
                earlier[offset] = kept[offset]

    def answer(fork, question, offset, version):
        try:
            r = fork.generate_text(prompt_for(question),
                                   max_tokens=max_tokens, temperature=0,
                                   commit=keep_forks)
        finally:
            if not keep_forks:
                fork.delete(allow_missing=True)
        return Answer(question, offset, version, fork.id, r.text)

    futures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        with doc.writer(start_offset=start) as w:
            pos = start

            def write_to(end):
                nonlocal pos
                while pos < end:
                    n = min(chunk_bytes, end - pos)
                    w.write(document[pos:pos + n])
                    pos += n

            for offset, _, question in asks:
                write_to(offset)
                if offset in earlier:
                    version = earlier[offset]
                else:
                    # Commits everything up to here, tokenizer tail
                    # included; no flush.
                    version = w.checkpoint().version
                # Forked here, not in the thread: the version must still be
                # kept (the store keeps only the newest few).
                fork = doc.fork(version)
                futures.append(pool.submit(answer, fork, question, offset,
                                           version))
            write_to(len(document))
            w.flush()  # the document ends here: its last token is final
            final = w.close()
        answers = [f.result() for f in futures]
    return answers, final.input_offset


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="127.0.0.1:7700")
    p.add_argument("--session", default="document")
    p.add_argument("--question", action="append", default=[],
                   help="OFFSET:QUESTION (asked once OFFSET bytes are read; "
                        "0 <= OFFSET <= the file's size)")
    p.add_argument("--keep-forks", action="store_true",
                   help="keep each fork (with its question and answer)")
    p.add_argument("file")
    args = p.parse_args()
    with open(args.file, "rb") as f:
        document = f.read()
    questions = []
    for q in args.question:
        offset, _, text = q.partition(":")
        questions.append((int(offset), text))
    try:
        with Client(args.target) as client:
            answers, final = process(client, args.session, document,
                                     questions, keep_forks=args.keep_forks)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for a in answers:
        print(f"@{a.at_offset} (v{a.version}, fork {a.fork_id}) "
              f"{a.question} -> {a.text!r}")
    print(f"[ingested {final} bytes]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
