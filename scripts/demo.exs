# `make demo`: three local nodes run the README's Cache; the primary's node
# is killed with SIGKILL; a new primary takes over with the state intact.
#
#     mix run scripts/demo.exs
helpers = Code.require_file("local_cluster.exs", __DIR__)
alias Visor.Scripts.LocalCluster

cache =
  defmodule Cache do
    use Visor

    @impl Visor
    def initial_state(_opts), do: %{}

    @impl Visor
    def handle_commit({:add, item}, state), do: {:ok, nil, Map.merge(state, item)}
  end

defmodule Demo do
  def say(text), do: IO.puts(IO.ANSI.format([:bright, "\n==> ", :reset, text]))
  def show("", value), do: IO.puts("    #=> #{inspect(value)}")
  def show(label, value), do: IO.puts("    #{label} #=> #{inspect(value)}")

  def on(node, fun, args), do: :erpc.call(node, Cache, fun, args, 30_000)

  def short(node), do: node |> Atom.to_string() |> String.split("_") |> hd()

  def print_status(node) do
    s = LocalCluster.status(node, Cache)

    IO.puts(
      "    as #{short(node)} sees it: view #{s.view}, #{s.status}, " <>
        "primary #{short(s.primary)}, committed op #{s.commit_max}"
    )

    for r <- s.replicas do
      IO.puts(
        "      replica #{r.index}  #{String.pad_trailing(short(r.node), 2)}  #{r.role}  #{r.health}"
      )
    end
  end
end

Demo.say("Starting three local BEAM nodes: a, b and c")
:ok = LocalCluster.start_distribution("visor_demo")
nodes = LocalCluster.start_nodes(["a", "b", "c"], :error)
[a, b, c] = nodes
IO.puts("    #{Enum.map_join(nodes, ", ", &to_string/1)}")

Demo.say("Starting the README's Cache on every node: {Cache, nodes: [a, b, c]}")
:ok = LocalCluster.load_modules(nodes, [helpers, cache])
LocalCluster.start_group(nodes, Cache, nodes: nodes)
Demo.print_status(a)

Demo.say("Committing from two different nodes (a backup forwards to the primary)")
IO.puts("    on a: Cache.commit({:add, %{user1: %{email: \"advisor1@example.com\"}}})")
Demo.show("", Demo.on(a, :commit, [{:add, %{user1: %{email: "advisor1@example.com"}}}]))
IO.puts("    on b: Cache.commit({:add, %{user2: %{email: \"advisor2@example.com\"}}})")
Demo.show("", Demo.on(b, :commit, [{:add, %{user2: %{email: "advisor2@example.com"}}}]))

Demo.say("Reading on the third node: linearizable by default")
Demo.show("on c: Cache.get()", Demo.on(c, :get, []))
Demo.show("on c: Cache.get_in([:user1, :email])", Demo.on(c, :get_in, [[:user1, :email]]))

primary = LocalCluster.status(a, Cache).primary
survivors = nodes -- [primary]
[s1, s2] = survivors

Demo.say(
  "Killing the primary's node, #{Demo.short(primary)}, with SIGKILL: no goodbye to its peers"
)

os_pid = LocalCluster.kill(primary)
IO.puts("    kill -9 #{os_pid}: node #{primary} is gone")
started = System.monotonic_time(:millisecond)

Demo.say(
  "Committing from #{Demo.short(s1)} right away: it waits while the survivors elect a new primary"
)

Demo.show(
  "on #{Demo.short(s1)}: Cache.commit({:add, %{user3: ...}}, timeout: 10_000)",
  Demo.on(s1, :commit, [{:add, %{user3: %{email: "advisor3@example.com"}}}, [timeout: 10_000]])
)

IO.puts("    answered #{System.monotonic_time(:millisecond) - started} ms after the kill")
Demo.print_status(s1)

Demo.say("The state is intact on both survivors: every acknowledged commit, once")
Demo.show("on #{Demo.short(s2)}: Cache.get()", Demo.on(s2, :get, []))

Demo.show(
  "on #{Demo.short(s1)}: Cache.get(consistency: :local)",
  Demo.on(s1, :get, [[consistency: :local]])
)

Demo.say(
  "Done. (A killed node must not rejoin with an empty memory until the recovery " <>
    "protocol lands: docs/operations.md, \"Current limitations\".)"
)

for n <- survivors, do: :erpc.call(n, :init, :stop, [])
