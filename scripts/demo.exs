# `make demo`: three local nodes run the README's Cache (examples/cache.ex);
# the primary's node is killed with SIGKILL; a new primary takes over with
# the state intact; the killed node is restarted, rejoins and catches up;
# then another node is lost for good and a new node, d, replaces it through
# a membership change.
#
#     mix run scripts/demo.exs
helpers = Code.require_file("local_cluster.exs", __DIR__)
alias Visor.Scripts.LocalCluster

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
# The peers load Cache and Visor from this project's build; the helpers
# were compiled by this script.
:ok = LocalCluster.load_modules(nodes, [helpers])
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

[name] = String.split(Demo.short(primary), "_", parts: 2)

Demo.say(
  "Restarting #{Demo.short(primary)} under the same name: an empty memory, " <>
    "so its replica rejoins and recovers the state from the others"
)

restarted = LocalCluster.restart_node(name, survivors, :error)
^primary = restarted
:ok = LocalCluster.load_modules([restarted], [helpers])
started = System.monotonic_time(:millisecond)
{:ok, _} = :erpc.call(restarted, LocalCluster, :start_group_here, [Cache, [nodes: nodes]])

LocalCluster.wait_until(
  fn -> LocalCluster.status(restarted, Cache).status != :forming end,
  15_000
)

Demo.show(
  "on #{Demo.short(restarted)}: Cache.status().status",
  LocalCluster.status(restarted, Cache).status
)

LocalCluster.wait_until(
  fn -> LocalCluster.status(restarted, Cache).status == :normal end,
  15_000
)

IO.puts("    :normal #{System.monotonic_time(:millisecond) - started} ms after its group started")

Demo.show(
  "on #{Demo.short(restarted)}: Cache.commit({:add, %{user4: ...}})",
  Demo.on(restarted, :commit, [{:add, %{user4: %{email: "advisor4@example.com"}}}])
)

Demo.show(
  "on #{Demo.short(restarted)}: Cache.get(consistency: :local)",
  Demo.on(restarted, :get, [[consistency: :local]])
)

Demo.print_status(restarted)

Demo.say("A new machine, d, joins as a spare: it runs the group's module but is no member")

d = LocalCluster.restart_node("d", nodes, :error)
:ok = LocalCluster.load_modules([d], [helpers])
{:ok, _} = :erpc.call(d, LocalCluster, :start_group_here, [Cache, [nodes: nodes]])
LocalCluster.wait_until(fn -> LocalCluster.status(d, Cache).status == :spare end, 15_000)
Demo.show("on d: Cache.status().status", LocalCluster.status(d, Cache).status)

gone = s2
kept = nodes -- [gone]

Demo.say(
  "Losing #{Demo.short(gone)} for good (SIGKILL, never restarted), and replacing it by d: " <>
    "d catches up as a learner, then the change commits through the log"
)

os_pid = LocalCluster.kill(gone)
IO.puts("    kill -9 #{os_pid}: node #{gone} is gone")
started = System.monotonic_time(:millisecond)

Demo.show(
  "on #{Demo.short(hd(kept))}: Visor.reconfigure(Cache, {:replace, #{Demo.short(gone)}, d})",
  :erpc.call(hd(kept), Visor, :reconfigure, [Cache, {:replace, gone, d}], 60_000)
)

IO.puts("    answered #{System.monotonic_time(:millisecond) - started} ms after it was asked")
LocalCluster.wait_until(fn -> LocalCluster.status(d, Cache).status == :normal end, 15_000)

Demo.show(
  "on d: Cache.commit({:add, %{user5: ...}})",
  Demo.on(d, :commit, [{:add, %{user5: %{email: "advisor5@example.com"}}}])
)

Demo.show("on d: Cache.get(consistency: :local)", Demo.on(d, :get, [[consistency: :local]]))
Demo.print_status(d)

Demo.say(
  "Done. Memory mode survives any minority of nodes losing their memory, one after " <>
    "another or overlapping, as long as a majority stays up; a node lost for good is " <>
    "replaced through the log, and the group tolerates a failure again (docs/operations.md)."
)

for n <- kept ++ [d], do: :erpc.call(n, :init, :stop, [])
