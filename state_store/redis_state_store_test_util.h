// SPDX-License-Identifier: Apache-2.0
// Helpers the Redis store's tests share.
#ifndef STATESTREAM_STATE_STORE_REDIS_STATE_STORE_TEST_UTIL_H_
#define STATESTREAM_STATE_STORE_REDIS_STATE_STORE_TEST_UTIL_H_

#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "state_store/redis_state_store.h"
#include "state_store/testing/redis_harness.h"
#include "state_store/testing/state_store_contract.h"

namespace statestream::testing {

// Session acme/`id` of model "tiny" with TestSnapshot(1), at `d`.
inline CreateSessionRequest NewSession(const std::string& id, Durability d) {
  CreateSessionRequest r;
  r.key = {"acme", id};
  r.model_id = "tiny";
  r.initial_state = TestSnapshot(1);
  r.durability = d;
  return r;
}

// A plain redis-server on a free port and a store on it.
inline void StartStandalone(std::unique_ptr<RedisServer>* server,
                            std::unique_ptr<StateStore>* store) {
  auto started = RedisServer::Start({});
  ASSERT_TRUE(started.ok()) << started.status();
  *server = *std::move(started);
  RedisStateStoreOptions o;
  o.addresses = {(*server)->address()};
  auto made = NewRedisStateStore(o);
  ASSERT_TRUE(made.ok()) << made.status();
  *store = *std::move(made);
}

}  // namespace statestream::testing

#endif  // STATESTREAM_STATE_STORE_REDIS_STATE_STORE_TEST_UTIL_H_
