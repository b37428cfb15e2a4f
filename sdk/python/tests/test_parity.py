# SPDX-License-Identifier: Apache-2.0
"""The asyncio client mirrors the sync one: each sync class's public
methods exist on its asyncio counterpart with the same parameters (names,
kinds and defaults), apart from the documented exceptions below."""
import inspect

import pytest

from statestream import AppendWriter, Client, GenerateStream, Session
from statestream.aio import (AsyncAppendWriter, AsyncClient,
                             AsyncGenerateStream, AsyncSession)

PAIRS = [(Client, AsyncClient), (Session, AsyncSession),
         (AppendWriter, AsyncAppendWriter),
         (GenerateStream, AsyncGenerateStream)]

# Public methods one side has and the other lacks, on purpose.
ONLY_ASYNC = {
    # The async-iterator protocol's way to end a stream; cancel() and
    # close() are on both.
    AsyncGenerateStream: {"aclose"},
}
ONLY_SYNC = {}
# Constructors compared too (the streams' are internal).
WITH_INIT = {Client, AsyncClient, Session, AsyncSession}


def public(cls) -> dict:
    out = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and not (name == "__init__" and
                                         cls in WITH_INIT):
            continue
        if inspect.isfunction(member) or isinstance(member, property):
            out[name] = member
    return out


def parameters(member):
    if isinstance(member, property):
        return "property"
    return [(p.name, p.kind, p.default)
            for p in inspect.signature(member).parameters.values()]


@pytest.mark.parametrize("sync_cls,async_cls", PAIRS,
                         ids=[a.__name__ for _, a in PAIRS])
def test_async_classes_mirror_the_sync_ones(sync_cls, async_cls):
    sync_members, async_members = public(sync_cls), public(async_cls)
    assert set(sync_members) - set(async_members) == \
        ONLY_SYNC.get(sync_cls, set())
    assert set(async_members) - set(sync_members) == \
        ONLY_ASYNC.get(async_cls, set())
    for name in set(sync_members) & set(async_members):
        assert parameters(sync_members[name]) == \
            parameters(async_members[name]), f"{async_cls.__name__}.{name}"
