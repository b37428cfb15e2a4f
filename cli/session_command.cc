// SPDX-License-Identifier: Apache-2.0
// `statestream session create|get|list|delete|fork|versions|rollback`.
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/cli_util.h"
#include "cli/client_flags.h"
#include "cli/command.h"
#include "common/status.h"

ABSL_FLAG(std::string, model_id, "",
          "session create: the model (default: the server's default).");
ABSL_FLAG(std::string, labels, "",
          "session create: labels k=v,k2=v2; session list: only sessions "
          "with these labels.");

namespace statestream::cli {
namespace {

absl::Status Usage(const std::string& message) {
  return InvalidArgumentError(Reason::kInvalidArgument, message);
}

absl::StatusOr<std::map<std::string, std::string>> Labels() {
  std::map<std::string, std::string> out;
  for (absl::string_view kv :
       absl::StrSplit(absl::GetFlag(FLAGS_labels), ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> p = absl::StrSplit(kv, '=');
    if (p.first.empty()) return Usage("--labels: expected k=v,k2=v2");
    out[p.first] = p.second;
  }
  return out;
}

void PrintSession(const v1::Session& s) {
  if (JsonOutputFlag()) {
    std::cout << ToJson(s) << "\n";
    return;
  }
  std::cout << s.session_id() << "\tmodel=" << s.model_id()
            << " position=" << s.position()
            << " input_offset=" << s.input_offset()
            << " pending_bytes=" << s.pending_bytes()
            << " version=" << s.version()
            << " committed_input_offset=" << s.committed_input_offset();
  if (!s.parent().session_id().empty()) {
    std::cout << " parent=" << s.parent().session_id() << "@"
              << s.parent().version();
  }
  std::cout << "\n";
}

absl::StatusOr<uint64_t> ParseVersion(absl::string_view text) {
  uint64_t v = 0;
  if (!absl::SimpleAtoi(text, &v)) {
    return Usage(absl::StrCat("not a version number: ", text));
  }
  return v;
}

absl::Status Session(const std::vector<std::string>& args) {
  if (args.empty()) {
    return Usage(
        "usage: statestream session create|get|list|delete|fork|versions|"
        "rollback ...");
  }
  const std::string& verb = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  SS_ASSIGN_OR_RETURN(auto client, ClientFromFlags());
  if (verb == "create") {
    if (rest.size() > 1) return Usage("session create [ID]");
    v1::CreateSessionRequest req;
    if (!rest.empty()) req.set_session_id(rest[0]);
    req.set_model_id(absl::GetFlag(FLAGS_model_id));
    SS_ASSIGN_OR_RETURN(auto labels, Labels());
    req.mutable_labels()->insert(labels.begin(), labels.end());
    SS_ASSIGN_OR_RETURN(v1::Session s, client->CreateSession(req));
    PrintSession(s);
    return absl::OkStatus();
  }
  if (verb == "list") {
    if (!rest.empty()) return Usage("session list takes no arguments");
    v1::ListSessionsRequest req;
    SS_ASSIGN_OR_RETURN(auto labels, Labels());
    req.mutable_label_selector()->insert(labels.begin(), labels.end());
    do {
      SS_ASSIGN_OR_RETURN(v1::ListSessionsResponse page,
                          client->ListSessions(req));
      for (const v1::Session& s : page.sessions()) PrintSession(s);
      req.set_page_token(page.next_page_token());
    } while (!req.page_token().empty());
    return absl::OkStatus();
  }
  if (rest.empty()) return Usage(absl::StrCat("session ", verb, " ID ..."));
  if (verb == "get" && rest.size() == 1) {
    SS_ASSIGN_OR_RETURN(v1::Session s, client->OpenSession(rest[0]).Get());
    PrintSession(s);
    return absl::OkStatus();
  }
  if (verb == "delete" && rest.size() == 1) {
    return client->OpenSession(rest[0]).Delete();
  }
  if (verb == "versions" && rest.size() == 1) {
    SS_ASSIGN_OR_RETURN(auto versions, client->OpenSession(rest[0]).Versions());
    for (const v1::Version& v : versions) {
      if (JsonOutputFlag()) {
        std::cout << ToJson(v) << "\n";
      } else {
        std::cout << v.version() << "\tposition=" << v.position()
                  << " input_offset=" << v.input_offset()
                  << " cause=" << v1::VersionCause_Name(v.cause()) << "\n";
      }
    }
    return absl::OkStatus();
  }
  if (verb == "fork" && rest.size() <= 2) {
    // ID[@VERSION] [NEW_ID]
    std::pair<std::string, std::string> src = absl::StrSplit(rest[0], '@');
    uint64_t version = 0;
    if (!src.second.empty()) {
      SS_ASSIGN_OR_RETURN(version, ParseVersion(src.second));
    }
    SS_ASSIGN_OR_RETURN(client::Session fork,
                        client->OpenSession(src.first).Fork(
                            version, rest.size() == 2 ? rest[1] : ""));
    SS_ASSIGN_OR_RETURN(v1::Session s, fork.Get());
    PrintSession(s);
    return absl::OkStatus();
  }
  if (verb == "rollback" && rest.size() == 2) {
    SS_ASSIGN_OR_RETURN(uint64_t version, ParseVersion(rest[1]));
    SS_ASSIGN_OR_RETURN(v1::Session s,
                        client->OpenSession(rest[0]).Rollback(version));
    PrintSession(s);
    return absl::OkStatus();
  }
  return Usage(absl::StrCat("bad arguments for `session ", verb,
                            "` (see statestream session --help)"));
}

int Run(const std::vector<std::string>& args) {
  absl::Status s = Session(args);
  if (!s.ok() && s.code() == absl::StatusCode::kInvalidArgument &&
      GetReason(s) == Reason::kInvalidArgument &&
      s.message().find("usage") != absl::string_view::npos) {
    ReportStatus(s);
    return kExitUsage;
  }
  return ReportStatus(s);
}

}  // namespace

const Command& SessionCommand() {
  static const Command kCommand{
      "session",
      "Create, inspect, fork, roll back and delete sessions.",
      "create [ID] | get ID | list | delete ID | fork ID[@VERSION] [NEW_ID] |\n"
      "    versions ID | rollback ID VERSION   [--target HOST:PORT] "
      "[--json]\n\n"
      "Prints one line per session (or version); with --json one JSON\n"
      "object per line (statestream.v1.Session / Version).",
      {__FILE__, kClientFlagsFile, kTlsFlagsFile},
      &Run};
  return kCommand;
}

}  // namespace statestream::cli
