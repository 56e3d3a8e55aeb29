#!/usr/bin/env bash
# What a new user does, start to finish: a fresh `mix new` application that
# depends on Visor (by path, on a copy of the files the hex package would
# hold), built with CARGO_TARGET_DIR pointing outside this repository,
# runs a 3-node group (commit, SIGKILL the primary's node, commit again on
# a survivor), then the same from a `mix release`.
#
#   scripts/fresh_app_check.sh              # everything in a new temp dir
#   CARGO_TARGET_DIR=/some/dir scripts/fresh_app_check.sh
#
# A fresh CARGO_TARGET_DIR (the default) builds the engine from scratch:
# minutes on a small machine. Leaves its directory behind on failure (the
# nodes' logs are there); KEEP=1 keeps it on success too.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/visor-fresh-app.XXXXXX")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$work/cargo-target}
host=$(hostname -s)
pids=()

cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [[ $status -eq 0 && -z "${KEEP:-}" ]]; then rm -rf "$work"; else echo "left in $work"; fi
}
trap cleanup EXIT

step() { echo "==> $*"; }

command -v epmd >/dev/null && epmd -daemon

# The dependency is a copy of exactly the files `mix hex.build` would pack
# (mix.exs's package files), so a file the package misses fails the build.
step "the package's files (mix.exs, package: [files: ...]) copied to $work/visor"
files=$(cd "$repo" && mix run --no-compile --no-start -e \
  'IO.puts(Enum.join(Mix.Project.config()[:package][:files], " "))' | tail -1)
mkdir "$work/visor"
(cd "$repo" && cp -r $files "$work/visor/")

step "mix new in $work (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cd "$work"
mix new fresh_app --sup >/dev/null
cd fresh_app

sed -i "/defp deps do/{n;s|\[|[{:visor, path: \"$work/visor\"}|}" mix.exs
grep -q "{:visor, path:" mix.exs

cat >lib/fresh_app/counter.ex <<'EOF'
defmodule FreshApp.Counter do
  use Visor

  @impl Visor
  def initial_state(_opts), do: 0

  @impl Visor
  def handle_commit({:add, n}, total), do: {:ok, total + n, total + n}
end
EOF

# The members come from the environment, so one build serves every node.
cat >lib/fresh_app/application.ex <<'EOF'
defmodule FreshApp.Application do
  use Application

  @impl true
  def start(_type, _args) do
    nodes =
      System.get_env("VISOR_NODES", "")
      |> String.split(",", trim: true)
      |> Enum.map(&String.to_atom/1)

    children = if nodes == [], do: [], else: [{FreshApp.Counter, nodes: nodes}]
    Supervisor.start_link(children, strategy: :one_for_one, name: FreshApp.Supervisor)
  end
end
EOF

step "mix compile (builds the NIF)"
mix compile
ls -l "$CARGO_TARGET_DIR"/release/libvisor_nif.so "$work"/visor/priv/native/libvisor_nif.so
cmp "$CARGO_TARGET_DIR"/release/libvisor_nif.so "$work"/visor/priv/native/libvisor_nif.so

# check COOKIE EXPR NODES...: runs EXPR on a hidden node connected to
# NODES, with `nodes` bound to them and `retry.(fun, tries)` at hand (every
# 500 ms until fun returns); the script fails if EXPR raises.
check() {
  local cookie=$1 expr=$2
  shift 2
  elixir --sname "ctl_$$_$RANDOM" --hidden --cookie "$cookie" -e "
    nodes = Enum.map(~w($*), &String.to_atom/1)
    retry = fn f, tries ->
      Enum.reduce_while(1..tries, nil, fn i, _ ->
        try do
          {:halt, f.()}
        rescue
          e -> if i == tries, do: reraise(e, __STACKTRACE__), else: (Process.sleep(500); {:cont, nil})
        end
      end)
    end
    Enum.each(nodes, fn n -> retry.(fn -> true = Node.connect(n) end, 120) end)
    $expr"
}

# exercise LABEL START: starts three nodes with START (a command taking the
# node's short name), commits on one and reads on another, SIGKILLs the
# primary's node, then commits and reads on the survivors.
exercise() {
  local label=$1 start=$2
  local names=("${label}a" "${label}b" "${label}c")
  local nodes=()
  for name in "${names[@]}"; do nodes+=("$name@$host"); done
  export VISOR_NODES
  VISOR_NODES=$(IFS=,; echo "${nodes[*]}")

  step "$label: three nodes: ${nodes[*]}"
  for name in "${names[@]}"; do
    $start "$name" >"$work/$name.log" 2>&1 &
    pids+=($!)
    disown $!
  done

  local out
  out=$(check "$cookie" '
    [a, b, c] = nodes
    for n <- nodes, do: retry.(fn -> :normal = :erpc.call(n, FreshApp.Counter, :status, []).status end, 120)
    3 = :erpc.call(a, FreshApp.Counter, :commit, [{:add, 3}])
    3 = :erpc.call(c, FreshApp.Counter, :get, [])
    primary = :erpc.call(b, FreshApp.Counter, :status, []).primary
    IO.puts("#{primary} #{:erpc.call(primary, :os, :getpid, [])}")
  ' "${nodes[@]}")
  local primary=${out% *} primary_pid=${out##* }
  echo "committed 3 on ${nodes[0]}, read it on ${nodes[2]}; primary: $primary (OS pid $primary_pid)"
  pids+=("$primary_pid")
  kill -9 "$primary_pid"

  local survivors=()
  for node in "${nodes[@]}"; do [[ $node == "$primary" ]] || survivors+=("$node"); done
  check "$cookie" '
    [s1, s2] = nodes
    10 = :erpc.call(s1, FreshApp.Counter, :commit, [{:add, 7}, [timeout: 10_000]])
    10 = :erpc.call(s2, FreshApp.Counter, :get, [])
    new = :erpc.call(s2, FreshApp.Counter, :status, []).primary
    IO.puts("killed it; committed 7 on #{s1}, read 10 on #{s2}; new primary: #{new}")
    for n <- nodes, do: IO.puts(:erpc.call(n, :os, :getpid, []))
  ' "${survivors[@]}" >"$work/$label.out"
  head -1 "$work/$label.out"
  # The survivors' OS pids: stopped by cleanup (a release's start script
  # may not be the VM's own process).
  while read -r pid; do pids+=("$pid"); done < <(tail -n +2 "$work/$label.out")
}

cookie=visor_fresh_app_$$
start_mix_node() { exec elixir --sname "$1" --cookie "$cookie" -S mix run --no-compile --no-deps-check --no-halt; }
exercise mix start_mix_node

step "MIX_ENV=prod mix release"
MIX_ENV=prod mix release --overwrite --quiet
release=$work/fresh_app/_build/prod/rel/fresh_app
ls -l "$release"/lib/visor-*/priv/native/libvisor_nif.so

start_release_node() {
  RELEASE_DISTRIBUTION=sname RELEASE_NODE=$1 RELEASE_COOKIE=$cookie exec "$release/bin/fresh_app" start
}
exercise rel start_release_node

step "fresh app: built with CARGO_TARGET_DIR, ran three nodes from mix and from a release"
