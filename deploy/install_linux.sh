#!/usr/bin/env bash
# Installs (or upgrades, or removes) centrovision-sync as a systemd service.
#
#   sudo deploy/install_linux.sh [BINARY]            install or upgrade
#   sudo deploy/install_linux.sh --uninstall         remove service and binary
#   sudo deploy/install_linux.sh --uninstall --purge also remove config, logs, user
#
# BINARY defaults to ./target/release/centrovision-sync. Needs no network.
#
# What it does (every step is safe to repeat, so re-running it is the upgrade
# procedure):
#   - system user "centrovision" (no login shell, no home directory);
#   - /opt/centrovision-sync/centrovision-sync    the binary (root:root 0755,
#     replaced atomically, so a running service is not disturbed mid-write);
#   - /etc/centrovision-sync/config.toml          from config.toml.example, only
#     if absent. It holds secrets: owned by the service user, mode 0600 (not
#     readable by anyone else; root can still read it). An existing config is
#     kept as is, only its owner and mode are re-applied;
#   - /var/log/centrovision-sync                  owned by the service user;
#   - /etc/systemd/system/centrovision-sync.service, daemon-reload, enable.
#     It does NOT start the service on a first install: config.toml must be
#     edited, then `doctor` and `init` run first (see the printed next steps).
#     On an upgrade of a running service it restarts it with the new binary.

set -euo pipefail

readonly SERVICE=centrovision-sync
readonly SERVICE_USER=centrovision
readonly INSTALL_DIR=/opt/centrovision-sync
readonly BIN_PATH="$INSTALL_DIR/centrovision-sync"
readonly CONFIG_DIR=/etc/centrovision-sync
readonly CONFIG_PATH="$CONFIG_DIR/config.toml"
readonly LOG_DIR=/var/log/centrovision-sync
readonly UNIT_PATH="/etc/systemd/system/$SERVICE.service"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

info() {
    printf '==> %s\n' "$*"
}

usage() {
    cat <<EOF
Usage: sudo $0 [BINARY | --uninstall [--purge]]

  [BINARY]               install or upgrade; BINARY defaults to
                         ./target/release/centrovision-sync
  --uninstall            stop and remove the service and the binary;
                         keeps $CONFIG_DIR, $LOG_DIR and the user
  --uninstall --purge    also remove the config, the logs and the
                         '$SERVICE_USER' user
EOF
}

# systemd is installed and is the running init (not the case in containers or
# chroots, where only the files are installed).
systemd_running() {
    command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]
}

# The first of the given files that exists.
first_existing() {
    local f
    for f in "$@"; do
        if [ -f "$f" ]; then
            printf '%s\n' "$f"
            return 0
        fi
    done
    return 1
}

ensure_user() {
    if getent passwd "$SERVICE_USER" >/dev/null; then
        info "user '$SERVICE_USER' already exists"
        return
    fi
    local nologin=/bin/false
    if [ -x /usr/sbin/nologin ]; then
        nologin=/usr/sbin/nologin
    elif [ -x /sbin/nologin ]; then
        nologin=/sbin/nologin
    fi
    local group_opt=(--user-group)
    if getent group "$SERVICE_USER" >/dev/null; then
        group_opt=(--gid "$SERVICE_USER")
    fi
    useradd --system "${group_opt[@]}" --no-create-home --home-dir /nonexistent \
        --shell "$nologin" --comment "CentroVision sync service" "$SERVICE_USER"
    info "created system user '$SERVICE_USER' (shell $nologin)"
}

install_binary() {
    local src="$1"
    install -d -m 0755 -o root -g root "$INSTALL_DIR"
    # Copy next to the target, then rename: atomic, and works while the old
    # binary is running ("text file busy" only affects writing in place).
    local tmp="$INSTALL_DIR/.centrovision-sync.new"
    install -m 0755 -o root -g root "$src" "$tmp"
    mv -f "$tmp" "$BIN_PATH"
    info "installed $BIN_PATH ($("$BIN_PATH" --version 2>/dev/null || echo 'version unknown'))"
    # The operations guide and the PostgreSQL setup files, so they are at a
    # known place (readable by the postgres user) after installation.
    local f
    for f in OPERATIONS.md least_privilege_role.sql postgresql.conf.snippet pg_hba.conf.snippet; do
        if [ -f "$SCRIPT_DIR/$f" ]; then
            install -m 0644 -o root -g root "$SCRIPT_DIR/$f" "$INSTALL_DIR/$f"
        fi
    done
}

install_config() {
    # root:centrovision 0750: the service user can enter, others cannot list.
    install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
    if [ -e "$CONFIG_PATH" ]; then
        info "keeping existing $CONFIG_PATH"
    else
        local example
        example="$(first_existing "$SCRIPT_DIR/../config.toml.example" \
            "$SCRIPT_DIR/config.toml.example" ./config.toml.example)" ||
            die "config.toml.example not found (looked in $SCRIPT_DIR/.. and $SCRIPT_DIR)"
        install -m 0600 -o "$SERVICE_USER" -g "$SERVICE_USER" "$example" "$CONFIG_PATH"
        CREATED_CONFIG=1
        info "created $CONFIG_PATH from $example: EDIT IT before starting the service"
    fi
    # The config holds the Supabase service_role key and the database
    # password: only the service user may read it (root can anyway).
    chown "$SERVICE_USER:$SERVICE_USER" "$CONFIG_PATH"
    chmod 0600 "$CONFIG_PATH"
    if [ -e "$CONFIG_DIR/env" ]; then
        chown root:root "$CONFIG_DIR/env"
        chmod 0600 "$CONFIG_DIR/env"
    fi
}

install_log_dir() {
    install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$LOG_DIR"
    # Log files created by running the CLI as root (e.g. `doctor`) would make
    # the service fail to write or rotate them: give everything back. -h: a
    # symlink in the directory is re-owned itself, never followed.
    chown -R -h "$SERVICE_USER:$SERVICE_USER" "$LOG_DIR"
}

install_unit() {
    local unit="$SCRIPT_DIR/$SERVICE.service"
    [ -f "$unit" ] || die "$unit not found (run this script from the source tree or release archive)"
    install -m 0644 -o root -g root "$unit" "$UNIT_PATH"
    info "installed $UNIT_PATH"
    if systemd_running; then
        systemctl daemon-reload
        systemctl enable "$SERVICE" >/dev/null 2>&1 || systemctl enable "$SERVICE"
        info "service enabled (starts at boot)"
        if systemctl is-active --quiet "$SERVICE"; then
            systemctl restart "$SERVICE"
            WAS_RUNNING=1
            info "service was running: restarted with the new binary"
        fi
    elif command -v systemctl >/dev/null 2>&1; then
        # `enable` only creates symlinks and works without a running systemd.
        systemctl enable "$SERVICE" >/dev/null 2>&1 ||
            printf 'warning: could not enable %s; run: systemctl enable %s\n' "$SERVICE" "$SERVICE" >&2
        printf 'warning: systemd is not running here; the unit is installed but not loaded\n' >&2
    else
        printf 'warning: systemctl not found; %s installed but not enabled\n' "$UNIT_PATH" >&2
    fi
}

print_next_steps() {
    local cli="sudo -u $SERVICE_USER $BIN_PATH --config $CONFIG_PATH"
    cat <<EOF

centrovision-sync is installed.
EOF
    if [ "${WAS_RUNNING:-0}" = 1 ]; then
        cat <<EOF

Upgrade done; the service is running the new binary. If the release notes say
so, run init again (see OPERATIONS.md, "Upgrading"), then check:
  $cli status
EOF
        return
    fi
    cat <<EOF

Next steps (details: $INSTALL_DIR/OPERATIONS.md):
  1. PostgreSQL, once, as a superuser (database name as in config.toml):
       sudo -u postgres psql -d centrovision -v sync_password='...' -f $INSTALL_DIR/least_privilege_role.sql
     and apply $INSTALL_DIR/postgresql.conf.snippet (then restart
     PostgreSQL) and $INSTALL_DIR/pg_hba.conf.snippet (then reload).
  2. Edit the config${CREATED_CONFIG:+ (just created from the example)}:
       sudo nano $CONFIG_PATH
  3. Check everything; it prints the exact fix for each problem:
       $cli doctor
  4. Initialize (once; needs superuser rights for the publication, see OPERATIONS.md):
       sudo -u postgres psql -d centrovision -c 'ALTER ROLE centrovision_sync SUPERUSER'
       $cli init
       sudo -u postgres psql -d centrovision -f $INSTALL_DIR/least_privilege_role.sql   # removes SUPERUSER again
     and install the upstream functions: add --upstream to init (mode = "postgres"),
     or paste the output of '$BIN_PATH init --print-upstream-sql' into the Supabase SQL editor.
  5. Start and watch:
       sudo systemctl start $SERVICE
       sudo systemctl status $SERVICE
       journalctl -u $SERVICE -f
EOF
}

do_install() {
    local src="${1:-./target/release/centrovision-sync}"
    [ -f "$src" ] || die "binary not found: $src (build it with 'cargo build --release', or pass its path)"
    [ -x "$src" ] || die "$src is not executable"
    # Catches a binary for the wrong architecture or a truncated copy before
    # anything is changed.
    "$src" --version >/dev/null 2>&1 ||
        die "$src does not run on this machine ('$src --version' failed): wrong architecture or damaged file?"

    ensure_user
    install_binary "$src"
    install_config
    install_log_dir
    install_unit
    print_next_steps
}

do_uninstall() {
    local purge="$1"
    if [ -f "$UNIT_PATH" ] || { systemd_running && systemctl cat "$SERVICE" >/dev/null 2>&1; }; then
        if systemd_running; then
            systemctl disable --now "$SERVICE" >/dev/null 2>&1 || true
        elif command -v systemctl >/dev/null 2>&1; then
            systemctl disable "$SERVICE" >/dev/null 2>&1 || true
        fi
        rm -f "$UNIT_PATH"
        if systemd_running; then
            systemctl daemon-reload
            systemctl reset-failed "$SERVICE" >/dev/null 2>&1 || true
        fi
        info "service stopped, disabled and removed"
    else
        info "no systemd unit installed"
    fi
    rm -rf "$INSTALL_DIR"
    info "removed $INSTALL_DIR"

    if [ "$purge" = 1 ]; then
        rm -rf "$CONFIG_DIR" "$LOG_DIR"
        info "removed $CONFIG_DIR and $LOG_DIR"
        if getent passwd "$SERVICE_USER" >/dev/null; then
            userdel "$SERVICE_USER" || printf 'warning: could not remove user %s\n' "$SERVICE_USER" >&2
            info "removed user '$SERVICE_USER'"
        fi
    else
        info "kept $CONFIG_DIR, $LOG_DIR and user '$SERVICE_USER' (add --purge to remove them)"
    fi

    cat <<'EOF'

IMPORTANT: the PostgreSQL side is untouched. The logical replication slot keeps
WAL on disk for as long as it exists; with the service gone it will fill the
disk (up to max_slot_wal_keep_size). If the service is not coming back, run as
a superuser in the clinic database (names are the [sync] defaults):

  SELECT pg_drop_replication_slot('centrovision_sync');
  DROP PUBLICATION IF EXISTS centrovision_sync;
  SELECT pg_replication_origin_drop('centrovision_sync');
  -- optional: DROP TABLE _sync_metadata, _sync_log, _sync_state;
  -- optional: DROP DATABASE centrovision_journal;   -- the journal ([local_postgres] journal_database)
  -- optional: DROP OWNED BY centrovision_sync; DROP ROLE centrovision_sync;
EOF
}

main() {
    local uninstall=0 purge=0 binary="" args="$*"
    while [ "$#" -gt 0 ]; do
        case "$1" in
            --uninstall) uninstall=1 ;;
            --purge) purge=1 ;;
            -h | --help)
                usage
                exit 0
                ;;
            -*)
                usage >&2
                die "unknown option: $1"
                ;;
            *)
                [ -z "$binary" ] || die "only one BINARY argument is accepted"
                binary="$1"
                ;;
        esac
        shift
    done
    if [ "$purge" = 1 ] && [ "$uninstall" = 0 ]; then
        die "--purge only goes with --uninstall"
    fi
    if [ "$uninstall" = 1 ] && [ -n "$binary" ]; then
        die "--uninstall takes no BINARY argument"
    fi
    if [ "$(id -u)" -ne 0 ]; then
        die "this installer must run as root (it creates a system user and writes to /opt, /etc and /var/log): sudo $0 $args"
    fi

    if [ "$uninstall" = 1 ]; then
        do_uninstall "$purge"
    else
        do_install "$binary"
    fi
}

CREATED_CONFIG=""
WAS_RUNNING=0
main "$@"
