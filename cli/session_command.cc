// SPDX-License-Identifier: Apache-2.0
// `statestream session create|get|list|update|delete|fork|versions|rollback|
// export|import`.
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/cli_util.h"
#include "cli/client_flags.h"
#include "cli/command.h"
#include "common/crc32c.h"
#include "common/status.h"
#include "google/protobuf/util/time_util.h"
#include "state_store/state_codec.h"
#include "statestream/local_error.h"

ABSL_FLAG(std::string, model_id, "",
          "session create: the model (default: the server's default); "
          "session list: only that model's sessions.");
ABSL_FLAG(std::string, labels, "",
          "session create/fork/import/update: labels k=v,k2=v2 (update "
          "replaces them all; --labels= clears them); session list: only "
          "sessions with these labels.");
ABSL_FLAG(absl::Duration, ttl, absl::ZeroDuration(),
          "session create/fork/import/update: the time to live after the "
          "last write, 1s to 8760h (365 days; hours are the largest unit: "
          "e.g. 24h); 0: the server's default "
          "(update: leave it).");
ABSL_FLAG(uint64_t, version, 0,
          "session export and fork: the version (0: the head; fork also "
          "takes ID@VERSION).");
ABSL_FLAG(std::string, output, "-",
          "session export: the file to write the state to (-: stdout; a "
          "file is replaced whole, never left half written).");

namespace statestream::cli {
namespace {

constexpr char kSessionSynopsis[] =
    "usage: statestream session create|get|list|update|delete|fork|versions|"
    "rollback|export|import ...";

// The arguments each verb takes after it, and the flags of this file it
// reads (one it does not read is a usage error, never silently dropped).
struct VerbArguments {
  const char* verb;
  size_t min_args;
  size_t max_args;
  const char* synopsis;
  std::vector<const char*> flags;
};
const VerbArguments kVerbArguments[] = {
    {"create",
     0,
     1,
     "create [ID] [--model-id M] [--labels k=v,...] [--ttl D]",
     {"model_id", "labels", "ttl"}},
    {"get", 1, 1, "get ID", {}},
    {"list",
     0,
     0,
     "list [--model-id M] [--labels k=v,...]",
     {"model_id", "labels"}},
    {"update",
     1,
     1,
     "update ID [--labels k=v,...] [--ttl D]",
     {"labels", "ttl"}},
    {"delete", 1, 1, "delete ID", {}},
    {"fork",
     1,
     2,
     "fork ID[@VERSION] [NEW_ID] [--version N] [--labels k=v,...] [--ttl D]",
     {"version", "labels", "ttl"}},
    {"versions", 1, 1, "versions ID", {}},
    {"rollback", 2, 2, "rollback ID VERSION", {}},
    {"export",
     1,
     1,
     "export ID [--version N] [--output FILE]",
     {"version", "output"}},
    {"import",
     1,
     2,
     "import FILE|- [NEW_ID] [--labels k=v,...] [--ttl D]",
     {"labels", "ttl"}},
};
// --session is a client flag (feed, generate, ...); session verbs take the
// id as an argument, so `session create --session X` is refused, never a
// session with a random id.
constexpr const char* kSessionFlags[] = {"model_id", "labels", "ttl", "version",
                                         "output"};

// A usage error unless `verb` is a session verb given as many arguments as
// it takes, and only flags it reads. Ids must be UTF-8 (a `string` field).
absl::Status CheckArguments(const std::string& verb,
                            const std::vector<std::string>& rest) {
  for (const VerbArguments& v : kVerbArguments) {
    if (verb != v.verb) continue;
    if (FlagGiven("session")) {
      return UsageError(absl::StrCat("session ", verb,
                                     " takes the id as an argument, not "
                                     "--session: statestream session ",
                                     v.synopsis));
    }
    if (rest.size() < v.min_args || rest.size() > v.max_args) {
      return UsageError(
          absl::StrCat("usage: statestream session ", v.synopsis));
    }
    for (const char* flag : kSessionFlags) {
      if (!FlagGiven(flag)) continue;
      if (std::find_if(v.flags.begin(), v.flags.end(), [&](const char* f) {
            return absl::string_view(f) == flag;
          }) == v.flags.end()) {
        std::string name = flag;
        std::replace(name.begin(), name.end(), '_', '-');
        return UsageError(absl::StrCat("session ", verb, " takes no --", name,
                                       "; usage: statestream session ",
                                       v.synopsis));
      }
    }
    // import's first argument is a file name, any bytes.
    for (size_t i = verb == "import" ? 1 : 0; i < rest.size(); ++i) {
      SS_RETURN_IF_ERROR(CheckUtf8(
          absl::StrCat("the session id \"", absl::CHexEscape(rest[i]), "\""),
          rest[i]));
    }
    // ID@VERSION: one '@' ("a@1@2" was read as a@1).
    if (verb == "fork" && std::count(rest[0].begin(), rest[0].end(), '@') > 1) {
      return UsageError(absl::StrCat("session fork: \"",
                                     absl::CHexEscape(rest[0]),
                                     "\" is not ID or ID@VERSION"));
    }
    // A proto string: invalid UTF-8 cannot be sent (the server could not
    // parse the request).
    SS_RETURN_IF_ERROR(CheckUtf8("--model-id", absl::GetFlag(FLAGS_model_id)));
    return absl::OkStatus();
  }
  return UsageError(
      absl::StrCat("unknown verb `session ", verb, "`; ", kSessionSynopsis));
}

// --ttl, exactly (unset: nullopt); a usage error outside the server's
// range, so that 500ms is not sent as 0 s.
absl::StatusOr<std::optional<absl::Duration>> Ttl() {
  const absl::Duration ttl = absl::GetFlag(FLAGS_ttl);
  if (ttl == absl::ZeroDuration()) return std::nullopt;
  if (ttl < absl::Seconds(1) || ttl > absl::Hours(24 * 365)) {
    return UsageError("--ttl must be between 1s and 365 days (8760h)");
  }
  return ttl;
}

void SetDuration(absl::Duration d, google::protobuf::Duration* out) {
  const int64_t seconds = absl::IDivDuration(d, absl::Seconds(1), &d);
  out->set_seconds(seconds);
  out->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(d)));
}

absl::StatusOr<std::map<std::string, std::string>> Labels() {
  std::map<std::string, std::string> out;
  for (absl::string_view kv :
       absl::StrSplit(absl::GetFlag(FLAGS_labels), ',', absl::SkipEmpty())) {
    // At the first '=': a value may hold '=' (k=a=b is k -> "a=b").
    std::vector<std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    if (p.size() != 2 || p[0].empty()) {
      return UsageError(
          absl::StrCat("--labels: expected k=v,k2=v2, got \"", kv, "\""));
    }
    SS_RETURN_IF_ERROR(CheckUtf8("--labels", kv));
    if (!out.emplace(p[0], p[1]).second) {  // not one value dropped silently
      return UsageError(
          absl::StrCat("--labels: the key \"", p[0], "\" is given twice"));
    }
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
  if (!s.labels().empty()) {
    // Sorted (a proto map has no order), as --labels takes them.
    const std::map<std::string, std::string> labels(s.labels().begin(),
                                                    s.labels().end());
    std::cout << " labels="
              << absl::StrJoin(labels, ",", absl::PairFormatter("="));
  }
  if (s.has_ttl()) {
    // To the nanosecond the server gives (1.5 s is "1.5s", not "1s").
    std::string ttl = absl::StrCat(s.ttl().seconds());
    if (s.ttl().nanos() != 0) {
      std::string fraction = absl::StrFormat("%09d", s.ttl().nanos());
      fraction.erase(fraction.find_last_not_of('0') + 1);
      absl::StrAppend(&ttl, ".", fraction);
    }
    std::cout << " ttl=" << ttl << "s expires="
              << google::protobuf::util::TimeUtil::ToString(s.expire_time());
  } else {
    std::cout << " ttl=pinned";
  }
  std::cout << "\n";
}

// A new session's --labels and --ttl (fork, import).
absl::StatusOr<client::CommitOptions> NewSessionOptions() {
  client::CommitOptions options;
  SS_ASSIGN_OR_RETURN(options.labels, Labels());
  SS_ASSIGN_OR_RETURN(options.ttl, Ttl());
  return options;
}

absl::StatusOr<uint64_t> ParseVersion(absl::string_view text) {
  uint64_t v = 0;
  if (!absl::SimpleAtoi(text, &v)) {
    return UsageError(absl::StrCat("not a version number: ", text));
  }
  return v;
}

absl::Status Session(const std::vector<std::string>& args) {
  if (args.empty()) return UsageError(kSessionSynopsis);
  const std::string& verb = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  // Bad usage is found before anything connects.
  SS_RETURN_IF_ERROR(CheckArguments(verb, rest));
  SS_ASSIGN_OR_RETURN(auto client, ClientFromFlags());
  if (verb == "create") {
    v1::CreateSessionRequest req;
    if (!rest.empty()) req.set_session_id(rest[0]);
    req.set_model_id(absl::GetFlag(FLAGS_model_id));
    SS_ASSIGN_OR_RETURN(auto labels, Labels());
    req.mutable_labels()->insert(labels.begin(), labels.end());
    SS_ASSIGN_OR_RETURN(std::optional<absl::Duration> ttl, Ttl());
    if (ttl.has_value()) SetDuration(*ttl, req.mutable_ttl());
    SS_ASSIGN_OR_RETURN(v1::Session s, client->CreateSession(req));
    PrintSession(s);
    return absl::OkStatus();
  }
  if (verb == "list") {
    v1::ListSessionsRequest req;
    SS_ASSIGN_OR_RETURN(auto labels, Labels());
    req.mutable_label_selector()->insert(labels.begin(), labels.end());
    req.set_model_id(absl::GetFlag(FLAGS_model_id));
    do {
      SS_ASSIGN_OR_RETURN(v1::ListSessionsResponse page,
                          client->ListSessions(req));
      for (const v1::Session& s : page.sessions()) PrintSession(s);
      // A server that names the page it just gave would be read forever
      // (INTERNAL/INTERNAL origin=sdk, as the SDKs' own listings say it).
      if (!page.next_page_token().empty() &&
          page.next_page_token() == req.page_token()) {
        return client::LocalError(
            absl::StatusCode::kInternal, Reason::kInternal,
            "ListSessions: the server repeated its page token");
      }
      req.set_page_token(page.next_page_token());
    } while (!req.page_token().empty());
    return absl::OkStatus();
  }
  if (verb == "update") {
    v1::UpdateSessionRequest req;
    SS_ASSIGN_OR_RETURN(auto labels, Labels());
    // Given, even empty: --labels= clears them all.
    if (FlagGiven("labels")) {
      req.mutable_labels()->insert(labels.begin(), labels.end());
      req.mutable_update_mask()->add_paths("labels");
    }
    SS_ASSIGN_OR_RETURN(std::optional<absl::Duration> ttl, Ttl());
    if (ttl.has_value()) {
      SetDuration(*ttl, req.mutable_ttl());
      req.mutable_update_mask()->add_paths("ttl");
    }
    if (req.update_mask().paths().empty()) {
      return UsageError("session update ID needs --labels and/or --ttl");
    }
    SS_ASSIGN_OR_RETURN(v1::Session s,
                        client->OpenSession(rest[0]).Update(req));
    PrintSession(s);
    return absl::OkStatus();
  }
  if (verb == "export") {
    // The blob is binary: never onto a terminal.
    const std::string out = absl::GetFlag(FLAGS_output);
    const bool to_stdout = WritesToStdout(out);
    if (to_stdout && isatty(STDOUT_FILENO)) {
      return UsageError(
          "session export writes the state as binary: give --output FILE "
          "or redirect stdout");
    }
    // The blob is the snapshot file format (docs/state-format.md), the
    // same as `model eval --state-out`; the header goes to stderr.
    SS_ASSIGN_OR_RETURN(
        client::ExportedState state,
        client->OpenSession(rest[0]).Export(absl::GetFlag(FLAGS_version)));
    if (out == "-") {
      std::cout.write(state.blob.data(),
                      static_cast<std::streamsize>(state.blob.size()));
      // A full disk or a closed file: the blob is cut short, not exported.
      SS_RETURN_IF_ERROR(FlushStdout());
    } else {
      // Whole or not at all: a failed write keeps an earlier snapshot.
      SS_RETURN_IF_ERROR(WriteFileAtomically(out, state.blob));
    }
    if (JsonOutputFlag()) {
      // The header as JSON: on stdout, unless the blob is there.
      (to_stdout ? std::cerr : std::cout) << ToJson(state.header) << "\n";
      return absl::OkStatus();
    }
    std::cerr << "exported " << rest[0] << " version " << state.header.version()
              << ": " << state.blob.size() << " bytes, position "
              << state.header.position() << "\n";
    return absl::OkStatus();
  }
  if (verb == "import") {
    // FILE [NEW_ID]: a new session from a snapshot file. Read without
    // iostreams: a directory or a read error is an error, not an abort.
    SS_ASSIGN_OR_RETURN(std::string blob,
                        rest[0] == "-" ? ReadStdin() : ReadFile(rest[0]));
    // The header the server checks the blob against, read from the blob.
    SS_ASSIGN_OR_RETURN(StateSnapshot snapshot, DecodeState(blob));
    client::ExportedState state;
    v1::StateHeader& h = state.header;
    h.set_format_version(1);
    h.set_model_fingerprint(snapshot.model_fingerprint);
    h.set_architecture(snapshot.architecture);
    h.set_position(snapshot.position);
    h.set_input_offset(snapshot.input_offset);
    h.set_pending_bytes(static_cast<uint32_t>(snapshot.tokenizer_tail.size()));
    h.set_total_bytes(blob.size());
    h.set_chunk_bytes(kStateChunkBytes);
    h.set_chunk_count(static_cast<uint32_t>(
        (blob.size() + kStateChunkBytes - 1) / kStateChunkBytes));
    h.set_crc32c(Crc32c(0, blob.data(), blob.size()));
    state.blob = std::move(blob);
    SS_ASSIGN_OR_RETURN(client::CommitOptions commit, NewSessionOptions());
    SS_ASSIGN_OR_RETURN(v1::Session s,
                        client->ImportSessionWith(
                            state, rest.size() == 2 ? rest[1] : "", commit));
    PrintSession(s);
    return absl::OkStatus();
  }
  if (verb == "get") {
    SS_ASSIGN_OR_RETURN(v1::Session s, client->OpenSession(rest[0]).Get());
    PrintSession(s);
    return absl::OkStatus();
  }
  if (verb == "delete") {
    SS_RETURN_IF_ERROR(client->OpenSession(rest[0]).Delete());
    // --json: one object per call, as every verb prints (a session id
    // is [A-Za-z0-9._-]: nothing to escape).
    if (JsonOutputFlag()) {
      std::cout << "{\"session_id\":\"" << rest[0] << "\",\"deleted\":true}\n";
    }
    return absl::OkStatus();
  }
  if (verb == "versions") {
    SS_ASSIGN_OR_RETURN(auto versions, client->OpenSession(rest[0]).Versions());
    for (const v1::Version& v : versions) {
      if (JsonOutputFlag()) {
        std::cout << ToJson(v) << "\n";
      } else {
        std::cout << v.version() << "\tposition=" << v.position()
                  << " input_offset=" << v.input_offset()
                  << " cause=" << v1::VersionCause_Name(v.cause());
        if (v.source_version() != 0) {
          std::cout << " source_version=" << v.source_version();
        }
        if (!v.request_id().empty()) {
          std::cout << " request_id=" << v.request_id();
        }
        std::cout << "\n";
      }
    }
    return absl::OkStatus();
  }
  if (verb == "fork") {
    // ID[@VERSION] [NEW_ID]
    std::pair<std::string, std::string> src = absl::StrSplit(rest[0], '@');
    uint64_t version = absl::GetFlag(FLAGS_version);
    if (!src.second.empty()) {
      if (FlagGiven("version")) {
        return UsageError(
            "give the version as ID@VERSION or --version, "
            "not both");
      }
      SS_ASSIGN_OR_RETURN(version, ParseVersion(src.second));
    }
    // The fork as CreateSession answers it: a read after it that failed
    // (a failover, a deadline) lost the new session's id, and a rerun
    // made a second fork.
    v1::CreateSessionRequest req;
    if (rest.size() == 2) req.set_session_id(rest[1]);
    req.mutable_fork_from()->set_session_id(src.first);
    req.mutable_fork_from()->set_version(version);
    SS_ASSIGN_OR_RETURN(auto labels, Labels());
    req.mutable_labels()->insert(labels.begin(), labels.end());
    SS_ASSIGN_OR_RETURN(std::optional<absl::Duration> ttl, Ttl());
    if (ttl.has_value()) SetDuration(*ttl, req.mutable_ttl());
    SS_ASSIGN_OR_RETURN(v1::Session s, client->CreateSession(req));
    PrintSession(s);
    return absl::OkStatus();
  }
  if (verb == "rollback") {
    SS_ASSIGN_OR_RETURN(uint64_t version, ParseVersion(rest[1]));
    if (version == 0) {  // versions count from 1 (fork's 0 is the head)
      return UsageError(
          "rollback: VERSION is 1 or more (see 'session versions ID')");
    }
    // Pinned to the head read now: a retry after a lost reply that reaches
    // a worker knowing nothing of the first attempt, once the session moved
    // on, is VERSION_MISMATCH instead of a second rollback over newer input.
    client::Session session = client->OpenSession(rest[0]);
    SS_ASSIGN_OR_RETURN(v1::Session head, session.Get());
    SS_ASSIGN_OR_RETURN(v1::Session s,
                        session.Rollback(version, head.version()));
    PrintSession(s);
    return absl::OkStatus();
  }
  // CheckArguments refused every other verb.
  return absl::InternalError(absl::StrCat("unhandled verb ", verb));
}

// Usage errors (UsageError, never a server's INVALID_ARGUMENT) exit 2,
// other failures 1; so does output that did not reach stdout.
int Run(const std::vector<std::string>& args) {
  absl::Status s = Session(args);
  if (s.ok()) s = FlushStdout();
  return ReportStatus(s);
}

}  // namespace

const Command& SessionCommand() {
  static const Command kCommand{
      "session",
      "Create, inspect, fork, roll back and delete sessions.",
      "create [ID] [--model-id M] [--labels k=v,...] [--ttl D] |\n"
      "    get ID | list [--model-id M] [--labels k=v,...] |\n"
      "    update ID [--labels k=v,...] [--ttl D] | delete ID |\n"
      "    fork ID[@VERSION] [NEW_ID] [--labels k=v,...] [--ttl D] |\n"
      "    versions ID | rollback ID VERSION |\n"
      "    export ID [--version N] [--output FILE] |\n"
      "    import FILE|- [NEW_ID] [--labels k=v,...] [--ttl D]\n"
      "    [--target HOST:PORT] [--json]\n\n"
      "Prints one line per session (or version); with --json one JSON\n"
      "object per line (statestream.v1.Session / Version). export writes\n"
      "the state in the snapshot format (docs/state-format.md); with\n"
      "--json its StateHeader (on stderr when the state goes to stdout,\n"
      "as -, /dev/stdout or /dev/fd/1);\n"
      "import creates a session from such a file. A flag the verb does not\n"
      "read is a usage error.",
      {__FILE__, kClientFlagsFile, kTlsFlagsFile},
      &Run,
      // The id is an argument of each session verb.
      {"session"}};
  return kCommand;
}

}  // namespace statestream::cli
