//! Runs the C tests in `ffi-tests/`: each is compiled against `include/rcluster.h` only, with
//! `-Wall -Wextra -Werror`, linked to the freshly built `librcluster.so`, and must exit 0
//! within its time limit. A test that overruns is killed with its whole process group, so no
//! worker outlives it.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Compiles `ffi-tests/<name>.c` once per run: several tests run the same program with other
/// arguments, and rewriting a binary another test is executing fails with ETXTBSY.
fn compile(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    built
        .entry(name.to_string())
        .or_insert_with(|| {
            let out = common::c_out_dir("ffi-tests").join(name);
            common::compile_c(&[common::manifest().join("ffi-tests").join(format!("{name}.c"))], &out);
            out
        })
        .clone()
}

/// Compiles and runs `name` with `args`; asserts it exits 0 within `limit`.
fn run_c(name: &str, args: &[&str], limit: Duration) {
    let exe = compile(name);
    let mut cmd = Command::new(&exe);
    cmd.args(args).stdin(Stdio::null()).env("RCLUSTER_LOG", "debug");
    let sanitizer =
        common::Sanitizer::attach(&mut cmd, &[name].iter().chain(args).copied().collect::<Vec<_>>().join("-"));
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", exe.display()));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if start.elapsed() > limit {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever happened, nothing of this test survives it.
    // SAFETY: kill(2) on the test's own process group.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let reports =
        sanitizer.map(|s| s.reports()).filter(|r| !r.is_empty()).map(|r| format!("\n{r}")).unwrap_or_default();
    let status = match status {
        Some(s) => s,
        None => {
            child.wait().ok();
            panic!("{name} {args:?} did not finish within {limit:?}{reports}");
        }
    };
    assert!(status.success(), "{name} {args:?} failed: {status}{reports}");
    assert!(reports.is_empty(), "{name} {args:?}: the sanitizers reported errors{reports}");
}

#[test]
fn messages_fork_mode() {
    run_c("messages", &["fork"], Duration::from_secs(60));
}

#[test]
fn messages_exec_mode_from_a_threaded_primary() {
    run_c("messages", &["exec"], Duration::from_secs(60));
}

#[test]
fn the_primary_in_the_data_path_runs_under_sched_batch_and_its_workers_do_not() {
    run_c("sched", &["default"], Duration::from_secs(60));
}

#[test]
fn sched_batch_can_be_turned_off_and_is_not_used_without_listeners() {
    run_c("sched", &["off"], Duration::from_secs(60));
    run_c("sched", &["no_listener"], Duration::from_secs(60));
}

#[test]
fn connections_queued_for_a_worker_that_leaves_come_back_with_its_nack() {
    run_c("refusal", &["nack"], Duration::from_secs(60));
}

#[test]
fn connections_queued_for_a_worker_that_leaves_and_exits_are_read_back_from_its_socket() {
    run_c("refusal", &["exit"], Duration::from_secs(60));
}

#[test]
fn handoff_round_robin_ipv4_ipv6() {
    run_c("handoff", &[], Duration::from_secs(60));
}

#[test]
fn sigterm_is_a_graceful_stop_that_answers_in_flight_requests() {
    run_c("signals", &["graceful"], Duration::from_secs(60));
}

#[test]
fn a_second_sigterm_stops_now() {
    run_c("signals", &["twice"], Duration::from_secs(60));
}

#[test]
fn sigkill_of_a_fork_mode_primary_leaves_no_worker() {
    run_c("signals", &["orphan-fork"], Duration::from_secs(60));
}

#[test]
fn sigkill_of_an_exec_mode_primary_leaves_no_worker() {
    run_c("signals", &["orphan-exec"], Duration::from_secs(60));
}

#[test]
fn fd_passing_both_ways() {
    run_c("fd_passing", &[], Duration::from_secs(60));
}

#[test]
fn big_messages_arrive_whole_and_oversized_ones_are_refused() {
    run_c("big_message", &[], Duration::from_secs(60));
}

#[test]
fn backpressure_again_then_drain_loses_nothing() {
    run_c("backpressure", &[], Duration::from_secs(60));
}

#[test]
fn misuse_gives_error_codes_not_crashes() {
    run_c("misuse", &[], Duration::from_secs(60));
}

#[test]
fn corked_bursts_longer_than_a_loop_turn_arrive_whole_both_ways() {
    run_c("batches", &[], Duration::from_secs(60));
}

#[test]
fn hostile_workers_are_dropped_and_the_primary_carries_on() {
    run_c("hostile", &[], Duration::from_secs(60));
}

#[test]
fn every_kind_of_bad_frame_drops_only_that_worker_which_is_replaced_and_no_fd_leaks() {
    run_c("hostile", &["frames"], Duration::from_secs(180));
}

/// A worker that sends an empty datagram, or shuts down its side of the channel, and lives on:
/// the primary takes it for an EOF (DISCONNECT), never kills it (the watchdog skips closed
/// channels) and never replaces it, so the slot holds a live process that serves nothing.
#[test]
fn a_worker_flooding_listen_requests_is_dropped_before_the_primary_queues_much() {
    run_c("hostile", &["frames", "listen-flood"], Duration::from_secs(60));
}

#[test]
fn a_worker_that_closes_its_channel_but_lives_on_is_killed_and_replaced() {
    run_c("hostile", &["frames", "empty", "eof"], Duration::from_secs(60));
}

/// A NewConn from a worker with 253 fds: the kernel truncates them (MSG_CTRUNC), the primary
/// logs "fds lost" and drops the frame (its fds are closed), but keeps the worker.
/// A sealed memfd of the maximum size that is all holes: refused as a bad frame before
/// anything maps it (reading its holes would allocate 64 MiB in the primary).
#[test]
fn a_sparse_memfd_message_drops_its_sender_and_costs_the_primary_no_memory() {
    run_c("hostile", &["frames", "big-sparse"], Duration::from_secs(60));
}

#[test]
fn a_newconn_from_a_worker_with_truncated_fds_drops_it() {
    run_c("hostile", &["frames", "newconn-max-fds"], Duration::from_secs(60));
}

#[test]
fn a_raw_flood_to_the_primary_is_throttled_not_buffered() {
    run_c("hostile", &["flood", "raw", "primary"], Duration::from_secs(90));
}

#[test]
fn a_raw_flood_relayed_to_a_worker_that_does_not_read_is_held_back_by_bounded_queues() {
    run_c("hostile", &["flood", "raw", "relay"], Duration::from_secs(90));
}

#[test]
fn a_raw_broadcast_flood_with_a_reader_that_does_not_read_is_held_back_by_bounded_queues() {
    run_c("hostile", &["flood", "raw", "all"], Duration::from_secs(90));
}

// The same floods through cluster_send/cluster_broadcast: the library's send queue leaves in
// Batch datagrams, and the primary reads at most 64 frames per channel per turn, keeping the
// rest of a batch in one Reader shared by every channel (src/primary/supervise.rs on_readable,
// src/ipc/reader.rs `pending`). The next read of *any* channel hands them out as that
// channel's frames: worker 1's messages arrive as worker 3's (to the primary), or are relayed
// as from worker 2 to worker 2 itself, or as a broadcast of worker 3 (which then misses them),
// and a healthy worker is stalled behind a relay it never sent.

#[test]
fn an_api_flood_to_the_primary_keeps_its_sender() {
    run_c("hostile", &["flood", "api", "primary"], Duration::from_secs(90));
}

#[test]
fn an_api_flood_relayed_to_a_worker_that_does_not_read_keeps_its_sender() {
    run_c("hostile", &["flood", "api", "relay"], Duration::from_secs(90));
}

#[test]
fn an_api_broadcast_flood_reaches_everyone_as_its_sender() {
    run_c("hostile", &["flood", "api", "all"], Duration::from_secs(90));
}

#[test]
fn a_batch_of_100_frames_arrives_as_its_senders_while_another_worker_speaks() {
    run_c("hostile", &["batch", "split"], Duration::from_secs(60));
}

/// The same shared-reader state, seen from a quiet cluster: the frames after the 64th wait
/// until some channel is readable again (here the next heartbeat, 5 s later).
#[test]
fn a_batch_of_100_frames_arrives_without_waiting_for_more_traffic() {
    run_c("hostile", &["batch", "stall"], Duration::from_secs(60));
}

/// After a bad frame inside a Batch, the rest of the batch is still handed out, as the frames
/// of whichever worker is read next (here the dropped worker's own replacement).
#[test]
fn the_rest_of_a_batch_dies_with_the_worker_that_sent_it() {
    run_c("hostile", &["batch", "spoof"], Duration::from_secs(60));
}

/// The worker's reader has the same 64-per-turn limit: a primary that corks 100 messages to
/// one worker sees 64 echoes, and the rest wait for the primary's next datagram to that worker.
#[test]
fn a_corked_burst_of_100_messages_to_a_worker_is_all_delivered() {
    run_c("hostile", &["batch", "to-worker"], Duration::from_secs(60));
}

/// A socket whose close would block (SO_LINGER with unsent data), sent by a worker in a way
/// that makes the primary close it, does not stall the primary's loop.
#[test]
fn a_lingering_socket_on_a_malformed_frame_does_not_stall_the_primary() {
    run_c("hostile", &["linger", "bad"], Duration::from_secs(60));
}

#[test]
fn a_lingering_socket_sent_to_no_worker_does_not_stall_the_primary() {
    run_c("hostile", &["linger", "nobody"], Duration::from_secs(60));
}

#[test]
fn a_lingering_socket_given_back_with_a_bad_nack_does_not_stall_the_primary() {
    run_c("hostile", &["linger", "nack"], Duration::from_secs(60));
}

/// What a dropped worker sent that was never read is read and its fds closed without
/// blocking before the primary closes its end of the channel.
#[test]
fn a_lingering_socket_left_unread_in_a_dead_workers_channel_does_not_stall_the_primary() {
    run_c("hostile", &["linger", "unread"], Duration::from_secs(60));
}

/// A NACK that gives a connection back must give back that very socket (checked by its
/// inode), not any unix socket whose peer name looks the same.
#[test]
fn a_worker_cannot_give_back_its_own_socketpair_for_a_unix_connection() {
    run_c("hostile", &["steal"], Duration::from_secs(60));
}

/// A worker's flood of frames that each cost a log line gets a bounded number of lines, and
/// the suppressed ones are counted in later lines.
#[test]
fn a_flood_of_bad_messages_makes_a_bounded_number_of_log_lines() {
    run_c("log_flood", &[], Duration::from_secs(60));
}

/// Passed fds that nobody closes cannot use up a receiver's fds: queues hold a bounded number,
/// and a worker or primary near its limit refuses them (the sender gets an ERROR) and keeps
/// serving connections.
#[test]
fn an_fd_flood_at_a_worker_and_the_primary_is_refused_near_their_limit() {
    run_c("fd_flood", &[], Duration::from_secs(120));
}

#[test]
fn log_records_reach_the_host_callback() {
    run_c("logging", &[], Duration::from_secs(30));
}

#[test]
fn unix_listeners_with_modes_removed_at_the_end() {
    run_c("listeners", &["unix"], Duration::from_secs(90));
}

#[test]
fn a_stale_unix_socket_file_is_replaced() {
    run_c("listeners", &["stale"], Duration::from_secs(90));
}

#[test]
fn a_live_unix_socket_is_refused() {
    run_c("listeners", &["live"], Duration::from_secs(90));
}

#[test]
fn listener_errors_name_the_address() {
    run_c("listeners", &["errors"], Duration::from_secs(90));
}

#[test]
fn systemd_socket_activation() {
    run_c("listeners", &["systemd"], Duration::from_secs(90));
}

#[test]
fn shared_policy_fork_mode() {
    run_c("accept_modes", &["shared-fork"], Duration::from_secs(120));
}

#[test]
fn shared_policy_exec_mode() {
    run_c("accept_modes", &["shared-exec"], Duration::from_secs(120));
}

#[test]
fn reuseport_policy_fork_mode() {
    run_c("accept_modes", &["reuseport-fork"], Duration::from_secs(120));
}

#[test]
fn reuseport_policy_exec_mode() {
    run_c("accept_modes", &["reuseport-exec"], Duration::from_secs(120));
}

#[test]
fn no_fd_growth_in_the_primary_after_100k_connections() {
    run_c("fd_growth", &[], Duration::from_secs(150));
}

#[test]
fn round_robin_is_even_over_10k_connections_and_8_workers() {
    run_c("policies", &["round_robin"], Duration::from_secs(120));
}

#[test]
fn sticky_keeps_each_client_address_on_one_worker() {
    run_c("policies", &["sticky"], Duration::from_secs(60));
}

#[test]
fn least_connections_sends_new_connections_to_the_idle_worker() {
    run_c("policies", &["least"], Duration::from_secs(60));
}

#[test]
fn connections_queued_with_a_dying_worker_are_answered_by_others() {
    run_c("worker_death", &[], Duration::from_secs(60));
}

#[test]
fn three_rolling_reloads_under_load_lose_no_request_and_a_failed_one_aborts() {
    run_c("lifecycle", &["reload"], Duration::from_secs(60));
}

#[test]
fn random_sigkills_under_load_the_cluster_returns_to_full_size() {
    run_c("lifecycle", &["chaos"], Duration::from_secs(60));
}

#[test]
fn sd_notify_ready_reloading_stopping_watchdog() {
    run_c("lifecycle", &["notify"], Duration::from_secs(60));
}

#[test]
fn a_crash_looping_slot_backs_off_then_is_given_up() {
    run_c("supervision", &["crashloop"], Duration::from_secs(60));
}

#[test]
fn a_worker_that_served_is_replaced_at_once_without_backoff() {
    run_c("supervision", &["served"], Duration::from_secs(60));
}

#[test]
fn workers_that_exit_right_after_ready_are_a_crash_loop() {
    run_c("supervision", &["readyloop"], Duration::from_secs(60));
}

#[test]
fn a_worker_not_ready_in_time_is_killed() {
    run_c("supervision", &["startup"], Duration::from_secs(60));
}

#[test]
fn a_stuck_worker_is_aborted_and_replaced_an_idle_one_is_not() {
    run_c("supervision", &["stuck"], Duration::from_secs(60));
}

#[test]
fn a_primary_whose_own_loop_stalls_kills_no_healthy_worker() {
    run_c("supervision", &["pause"], Duration::from_secs(60));
}

#[test]
fn a_worker_that_lives_on_after_its_channel_failed_is_killed_and_replaced() {
    run_c("hostile", &["shutrd"], Duration::from_secs(60));
}

#[test]
fn a_worker_that_blocks_with_its_channel_full_of_notices_is_judged() {
    run_c("hostile", &["blocked"], Duration::from_secs(60));
}

#[test]
fn scaling_by_api_and_by_signal() {
    run_c("supervision", &["scale"], Duration::from_secs(60));
}

#[test]
fn max_requests_recycles_workers_without_failed_requests() {
    run_c("supervision", &["maxreq"], Duration::from_secs(60));
}

#[test]
fn worker_user_cwd_env_and_silent_stdio_fork_mode() {
    run_c("supervision", &["process", "fork"], Duration::from_secs(60));
}

#[test]
fn worker_user_cwd_env_and_silent_stdio_exec_mode() {
    run_c("supervision", &["process", "exec"], Duration::from_secs(60));
}

#[test]
fn manual_readiness_waits_for_cluster_ready() {
    run_c("supervision", &["manual"], Duration::from_secs(60));
}

#[test]
fn an_exec_mode_reload_runs_the_program_now_on_disk() {
    run_c("supervision", &["exec-reload"], Duration::from_secs(60));
}

#[test]
fn a_primary_at_64_fds_accepts_within_its_table_and_answers_every_connection() {
    run_c("primary_fds", &["table"], Duration::from_secs(120));
}

#[test]
fn handoffs_refused_with_etoomanyrefs_wait_and_are_all_answered() {
    run_c("primary_fds", &["inflight"], Duration::from_secs(120));
}

#[test]
fn connections_a_worker_cannot_receive_go_to_another() {
    run_c("fd_limit", &[], Duration::from_secs(60));
}

#[test]
fn soak_100k_handoffs_and_1m_messages_constant_fds_bounded_rss() {
    run_c("soak", &[], Duration::from_secs(180));
}

/// The same soak with both sides batching their sends (cluster_cork/cluster_uncork around each
/// loop turn). Fails today: the primary reads at most 64 frames per channel per turn and keeps
/// the rest of a Batch datagram in one reader shared by all channels, so they are handed out
/// on the next read of another worker's channel as that worker's frames.
#[test]
fn soak_with_corked_batches_keeps_senders_apart() {
    run_c("soak", &["200000", "10000", "64", "cork"], Duration::from_secs(180));
}

#[test]
fn max_requests_with_the_largest_jitter_starts_and_serves() {
    run_c("config_edges", &["maxreq", "1", "18446744073709551615"], Duration::from_secs(60));
}

#[test]
fn max_requests_at_u64_max_with_u64_max_jitter_starts_and_serves() {
    run_c("config_edges", &["maxreq", "18446744073709551615", "18446744073709551615"], Duration::from_secs(60));
}

#[test]
fn a_one_byte_max_message_bounds_user_payloads_not_the_protocol_fork_mode() {
    run_c("config_edges", &["small-message", "fork"], Duration::from_secs(60));
}

#[test]
fn a_one_byte_max_message_bounds_user_payloads_not_the_protocol_exec_mode() {
    run_c("config_edges", &["small-message", "exec"], Duration::from_secs(60));
}

#[test]
fn exec_workers_get_empty_arguments_from_the_primary_s_own_argv() {
    run_c("config_edges", &["exec-argv", "default", "", "middle", "", ""], Duration::from_secs(60));
}

#[test]
fn exec_workers_get_empty_arguments_from_a_given_argv() {
    run_c("config_edges", &["exec-argv", "given", "", "x", ""], Duration::from_secs(60));
}

#[test]
fn silent_workers_of_a_primary_that_closed_its_stdio_before_the_start_fork_mode() {
    run_c("config_edges", &["silent-stdio", "fork", "before"], Duration::from_secs(60));
}

#[test]
fn silent_workers_of_a_primary_that_closed_its_stdio_after_the_start_fork_mode() {
    run_c("config_edges", &["silent-stdio", "fork", "after"], Duration::from_secs(60));
}

#[test]
fn silent_workers_of_a_primary_that_closed_its_stdio_before_the_start_exec_mode() {
    run_c("config_edges", &["silent-stdio", "exec", "before"], Duration::from_secs(60));
}

#[test]
fn silent_workers_of_a_primary_that_closed_its_stdio_after_the_start_exec_mode() {
    run_c("config_edges", &["silent-stdio", "exec", "after"], Duration::from_secs(60));
}

#[test]
fn workers_that_listen_share_one_port_and_split_round_robin_fork() {
    run_c("worker_listen", &["share", "fork", "rr"], Duration::from_secs(60));
}

#[test]
fn workers_that_listen_share_one_port_exec() {
    run_c("worker_listen", &["share", "exec", "rr"], Duration::from_secs(60));
}

#[test]
fn workers_that_listen_get_the_socket_with_shared() {
    run_c("worker_listen", &["share", "fork", "shared"], Duration::from_secs(60));
}

#[test]
fn workers_that_listen_bind_their_own_with_reuseport() {
    run_c("worker_listen", &["share", "exec", "reuseport"], Duration::from_secs(60));
}

#[test]
fn a_worker_asking_for_port_0_does_not_get_the_configs_port_0_listener() {
    run_c("listen_edges", &["port0"], Duration::from_secs(60));
}

#[test]
fn a_primary_listening_where_workers_listen_makes_it_every_workers_rr() {
    run_c("listen_edges", &["merge", "rr"], Duration::from_secs(60));
}

#[test]
fn a_primary_listening_where_workers_listen_makes_it_every_workers_shared() {
    run_c("listen_edges", &["merge", "shared"], Duration::from_secs(60));
}

#[test]
fn connections_waiting_for_one_listeners_replacement_do_not_starve_the_others() {
    run_c("listen_edges", &["starve"], Duration::from_secs(90));
}

#[test]
fn a_unix_path_whose_server_has_a_full_backlog_is_refused_without_blocking_the_primary() {
    run_c("listen_edges", &["backlog"], Duration::from_secs(60));
}

#[test]
fn a_message_that_arrives_during_a_listen_is_delivered_without_other_traffic() {
    run_c("listen_edges", &["wake"], Duration::from_secs(60));
}

#[test]
fn connections_waiting_for_a_busy_sticky_worker_do_not_make_the_primary_spin() {
    run_c("listen_edges", &["sticky"], Duration::from_secs(60));
}

#[test]
fn a_worker_cannot_make_a_primary_with_few_fds_bind_until_it_cannot_fork() {
    run_c("listen_edges", &["lowfd"], Duration::from_secs(60));
}

#[test]
fn unix_paths_are_the_workers_and_another_spelling_of_an_open_socket_is_that_listener() {
    run_c("listen_edges", &["paths"], Duration::from_secs(60));
}

#[test]
fn a_worker_listening_and_unlistening_in_a_loop_leaves_no_listener_open() {
    run_c("listen_edges", &["churn"], Duration::from_secs(90));
}

#[test]
fn reload_under_load_with_workers_that_listen_fails_nothing_shared() {
    run_c("worker_listen", &["reload", "fork", "shared"], Duration::from_secs(60));
}

#[test]
fn a_respawned_worker_listens_again_and_the_port_waits_for_it_shared() {
    run_c("worker_listen", &["respawn", "fork", "shared"], Duration::from_secs(60));
}

#[test]
fn a_worker_unlistening_a_shared_socket_under_load_loses_nothing() {
    run_c("worker_listen", &["unlisten", "fork", "shared"], Duration::from_secs(60));
}

#[test]
fn five_hundred_twelve_workers_start_serve_evenly_reload_and_stop() {
    // Under the sanitizers, 512 instrumented processes exiting at once make LeakSanitizer's
    // stop-the-world fail now and then ("Unable to get registers from thread"): 128 there.
    let workers = if common::sanitize() { "128" } else { "512" };
    run_c("many_workers", &[workers], Duration::from_secs(240));
}

#[test]
fn metrics_and_healthz_follow_the_cluster_and_survive_idle_and_bad_scrapers() {
    run_c("metrics", &[], Duration::from_secs(90));
}

#[test]
fn a_worker_listening_on_a_held_port_gets_eaddrinuse_naming_it() {
    run_c("worker_listen", &["inuse", "fork"], Duration::from_secs(60));
}

#[test]
fn unlisten_under_load_loses_nothing_and_the_last_one_closes_the_port() {
    run_c("worker_listen", &["unlisten", "fork"], Duration::from_secs(60));
}

#[test]
fn a_respawned_worker_listens_again_and_the_port_waits_for_it() {
    run_c("worker_listen", &["respawn", "fork"], Duration::from_secs(60));
}

#[test]
fn reload_under_load_with_workers_that_listen_fails_nothing_fork() {
    run_c("worker_listen", &["reload", "fork"], Duration::from_secs(60));
}

#[test]
fn reload_under_load_with_workers_that_listen_fails_nothing_exec() {
    run_c("worker_listen", &["reload", "exec"], Duration::from_secs(60));
}

#[test]
fn fork_env_reaches_that_worker_and_its_respawn() {
    run_c("worker_listen", &["env", "exec"], Duration::from_secs(60));
}

/// PR_SET_PDEATHSIG follows the thread that forked: workers started by a call from a
/// short-lived thread were SIGKILLed when it exited. They are started on the loop thread.
#[test]
fn workers_started_from_a_short_lived_thread_outlive_it() {
    for how in ["scale", "fork", "reload"] {
        run_c("threads", &["spawn", how], Duration::from_secs(100));
    }
}

/// An EXEC-mode start waited for EOF on an error pipe that any fork of the process (a host
/// thread's, without exec) kept open: starts took as long as those children lived.
#[test]
fn exec_mode_starts_are_not_held_up_by_a_host_threads_fork() {
    run_c("threads", &["sleeper"], Duration::from_secs(100));
}

#[test]
fn a_second_thread_dispatching_is_refused_and_nothing_is_lost() {
    run_c("threads", &["dispatch-twice"], Duration::from_secs(100));
}

#[test]
fn the_log_callback_changing_the_log_sink_gets_state_not_a_deadlock() {
    run_c("threads", &["log-reentry"], Duration::from_secs(100));
}

#[test]
fn cluster_shutdown_from_a_signal_handler_stops_the_cluster_gracefully() {
    run_c("threads", &["signal-shutdown"], Duration::from_secs(100));
}

/// A failed cluster_worker_start closed the channel, and the retry adopted (and closed)
/// whatever fd the host had opened under its number.
#[test]
fn a_worker_start_retry_runs_on_its_channel_and_leaves_the_hosts_fds_alone() {
    run_c("stale_fds", &["worker-retry"], Duration::from_secs(100));
}

/// A config with cluster_config_listen_systemd reused after its start ended took fd 3 again:
/// by then the host's own file.
#[test]
fn systemd_sockets_serve_one_start_and_a_reused_config_leaves_fd_3_alone() {
    run_c("stale_fds", &["systemd", "finished"], Duration::from_secs(100));
    run_c("stale_fds", &["systemd", "failed"], Duration::from_secs(100));
}

/// kill(2) by pid after someone else reaped the worker signalled whoever had the pid next.
#[test]
fn a_reaped_worker_is_never_signalled_by_pid() {
    run_c("stale_fds", &["kill-after-reap"], Duration::from_secs(100));
}

#[test]
fn node_channel_protocol_spoken_to_a_worker_that_is_not_node() {
    run_c("node_channel", &["protocol"], Duration::from_secs(60));
}

#[test]
fn node_channel_fd_floods_endless_lines_and_garbage_from_a_worker() {
    run_c("node_channel", &["hostile"], Duration::from_secs(60));
}

/// Child processes on the loop (issue 18): output, stdin, quoting, timeout, maxBuffer,
/// signals, missing programs, 1,000 children without growth, orphans, children of a worker.
#[test]
fn children_output_of_several_mib_on_both_streams_without_deadlock() {
    run_c("children", &["output"], Duration::from_secs(120));
}

#[test]
fn children_stdin_streams_through_cat() {
    run_c("children", &["stdin"], Duration::from_secs(120));
}

#[test]
fn children_exec_file_arguments_are_not_a_shell_line_and_exec_is() {
    run_c("children", &["quoting"], Duration::from_secs(120));
}

#[test]
fn children_past_their_timeout_are_killed() {
    run_c("children", &["timeout"], Duration::from_secs(120));
}

#[test]
fn children_exec_past_max_buffer_is_an_error_and_killed() {
    run_c("children", &["maxbuffer"], Duration::from_secs(120));
}

#[test]
fn children_exit_by_signal() {
    run_c("children", &["signal"], Duration::from_secs(120));
}

#[test]
fn children_missing_programs_are_named() {
    run_c("children", &["missing"], Duration::from_secs(120));
}

#[test]
fn children_a_thousand_in_a_row_leave_no_fd_or_zombie() {
    run_c("children", &["many"], Duration::from_secs(120));
}

#[test]
fn children_die_with_a_sigkilled_primary_unless_detached() {
    run_c("children", &["orphan"], Duration::from_secs(120));
}

#[test]
fn children_are_killed_and_reaped_when_the_runtime_stops_unless_detached() {
    run_c("children", &["stop"], Duration::from_secs(120));
}

#[test]
fn children_of_a_worker_report_on_its_loop() {
    run_c("children", &["worker"], Duration::from_secs(120));
}

/// Threads that report to the loop (issue 18).
#[test]
fn loop_threads_post_a_million_messages_in_order() {
    run_c("loop_threads", &["million"], Duration::from_secs(120));
}

#[test]
fn loop_threads_echo_round_trips_and_recv_times_out() {
    run_c("loop_threads", &["echo"], Duration::from_secs(120));
}

#[test]
fn loop_threads_pool_and_refusals() {
    run_c("loop_threads", &["pool"], Duration::from_secs(120));
}

#[test]
fn loop_threads_of_a_worker_post_to_its_loop() {
    run_c("loop_threads", &["worker"], Duration::from_secs(120));
}

#[test]
fn loop_threads_running_make_fork_mode_refuse() {
    run_c("loop_threads", &["fork"], Duration::from_secs(120));
}
