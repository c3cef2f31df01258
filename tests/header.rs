//! The checked-in `include/rcluster.h` must be exactly what build.rs generates from src/ffi.
//! After changing the C ABI, regenerate it with `make header`.

#[test]
fn checked_in_header_matches_the_generated_one() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/rcluster.h"));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/rcluster.h");
    let checked_in = std::fs::read_to_string(path).expect("include/rcluster.h exists");
    assert!(
        generated == checked_in,
        "include/rcluster.h is stale: run `make header` (RCLUSTER_UPDATE_HEADER=1 cargo build) and commit it"
    );
}

#[test]
fn the_version_macros_match_cargo_toml() {
    let header = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/include/rcluster.h"));
    for (name, value) in [
        ("RCLUSTER_VERSION_MAJOR", env!("CARGO_PKG_VERSION_MAJOR")),
        ("RCLUSTER_VERSION_MINOR", env!("CARGO_PKG_VERSION_MINOR")),
        ("RCLUSTER_VERSION_PATCH", env!("CARGO_PKG_VERSION_PATCH")),
    ] {
        assert!(header.contains(&format!("#define {name} {value}\n")), "{name} is {value}");
    }
    assert!(header.contains(&format!("#define RCLUSTER_VERSION_STRING \"{}\"", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn every_contract_function_is_declared() {
    let header = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/include/rcluster.h"));
    let contract = [
        "bool cluster_is_primary(void);",
        "bool cluster_is_worker(void);",
        "uint32_t cluster_worker_id(void);",
        "cluster_config *cluster_config_new(void);",
        "void cluster_config_free(struct cluster_config *cfg);",
        "int32_t cluster_config_set_workers(struct cluster_config *cfg, uint32_t n);",
        "int32_t cluster_config_set_mode(struct cluster_config *cfg, cluster_mode mode);",
        "int32_t cluster_config_set_policy(struct cluster_config *cfg, cluster_policy policy);",
        "int32_t cluster_config_listen_tcp(struct cluster_config *cfg, const char *host, uint16_t port);",
        "int32_t cluster_config_listen_unix(struct cluster_config *cfg, const char *path);",
        "int32_t cluster_fork(void);",
        "int32_t cluster_local_port(uint32_t listener);",
        "int32_t cluster_workers(uint32_t *ids, size_t cap);",
        "int32_t cluster_worker_info(uint32_t id, struct cluster_worker_info *out);",
        "int32_t cluster_worker_kill(uint32_t id, int32_t signal);",
        "int32_t cluster_worker_disconnect(uint32_t id);",
        "int32_t cluster_reload(void);",
        "int32_t cluster_scale(uint32_t n);",
        "int32_t cluster_worker_start(cluster_event_cb cb, void *userdata);",
        "int32_t cluster_ready(void);",
        "int32_t cluster_run(void);",
        "int32_t cluster_dispatch(int32_t timeout_ms);",
        "int32_t cluster_fd(void);",
        "int32_t cluster_send(uint32_t to, const uint8_t *data, size_t len);",
        "int32_t cluster_send_fd(uint32_t to, const uint8_t *data, size_t len, int32_t fd);",
        "int32_t cluster_broadcast(const uint8_t *data, size_t len);",
        "int32_t cluster_shutdown(uint32_t grace_ms);",
        "const char *cluster_strerror(int32_t code);",
        "const char *cluster_last_error(void);",
        "int32_t cluster_log_init(void);",
        "typedef int (*cluster_worker_main)(void *userdata);",
        "typedef void (*cluster_event_cb)(void *userdata, const struct cluster_event *event);",
    ];
    for decl in contract {
        assert!(header.contains(decl), "rcluster.h lacks `{decl}`");
    }
    for (name, value) in [
        ("CLUSTER_E_INVAL", "-1"),
        ("CLUSTER_E_TIMEOUT", "-11"),
        ("CLUSTER_MODE_EXEC", "1"),
        ("CLUSTER_POLICY_REUSEPORT", "4"),
        ("CLUSTER_EVENT_ERROR", "9"),
        ("CLUSTER_WORKER_DEAD", "4"),
    ] {
        assert!(header.contains(&format!("#define {name} {value}\n")), "rcluster.h lacks {name} = {value}");
    }
}
