// SPDX-License-Identifier: Apache-2.0
// A shared object using the installed SDK (a plugin, a language binding):
// it links only if the SDK's archives are position-independent.
#include <string>

#include "statestream/client.h"

extern "C" int consumer_plugin_connect(const char* target) {
  statestream::client::ClientOptions options;
  options.targets = {std::string(target)};
  return statestream::client::Client::Create(options).ok() ? 0 : 1;
}
