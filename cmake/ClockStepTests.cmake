# SPDX-License-Identifier: Apache-2.0
# The loops that keep something alive (heartbeats, lease renewals, stall
# watchdogs), run again with the process's wall clock an hour ahead of the
# kernel's (libfaketime; the steady clock untouched). A timed wait that
# turns its timeout into a wall-clock deadline, as Abseil 20220623's own
# do, then lasts an hour, as after the clock stepped back an hour: the
# loops wait on the steady clock (SteadyWaiter, common/clock.h), so these
# pass as usual. docs/deploy.md, "What each failure does".
#
# Not in sanitizer builds: their runtime must be the first library loaded.
if(STATESTREAM_SANITIZE)
  return()
endif()
find_library(SS_LIBFAKETIME NAMES libfaketime.so.1
             PATHS /usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/faketime
                   /usr/lib/faketime
             NO_DEFAULT_PATH)
if(NOT SS_LIBFAKETIME)
  # Required where CI runs (scripts/deps.sh installs it); elsewhere the
  # other tests still build and run.
  if(DEFINED ENV{CI})
    message(FATAL_ERROR "libfaketime is missing: apt-get install libfaketime")
  endif()
  message(WARNING "libfaketime is missing (apt-get install libfaketime): "
                  "the clock_step.* tests are left out")
  return()
endif()

# DONT_FAKE_MONOTONIC=1 leaves the steady clock alone (faked, waits on it
# hang: libfaketime issue #469); NO_FAKE_STAT=1 leaves file times alone
# (ClockStepTest compares with one).
function(ss_add_clock_step_test name target filter)
  add_test(NAME clock_step.${name}
           COMMAND $<TARGET_FILE:${target}> --gtest_filter=${filter})
  set_tests_properties(clock_step.${name} PROPERTIES
    LABELS unit TIMEOUT 300
    ENVIRONMENT
      "LD_PRELOAD=${SS_LIBFAKETIME};FAKETIME=+1h;DONT_FAKE_MONOTONIC=1;NO_FAKE_STAT=1")
endfunction()

ss_add_clock_step_test(steady_waiter common_test
                       "ClockStepTest.*:SteadyWaiterTest.*:ClockTest.*")
ss_add_clock_step_test(heartbeats worker_registration_test "*")
ss_add_clock_step_test(lease_renewals session_manager_test
                       "SessionManagerLeaseTest.LeasesAreRenewedEveryThird*")
ss_add_clock_step_test(serve_client_stalls client_stalls_test "*")
ss_add_clock_step_test(gateway_watchdog gateway_test "GatewayTest.*IsCutOff")
