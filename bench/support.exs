# What the bench scripts share: progress lines, percentiles, the run's
# environment, and writing a result as JSON (a tiny encoder: no hex
# packages here).
defmodule Visor.Bench.Support do
  @moduledoc false

  @doc "{user + system CPU seconds, resident set in KB} of an OS process (Linux /proc)."
  def os_process(os_pid, ticks_per_s) do
    stat = File.read!("/proc/#{os_pid}/stat")
    # Fields after the command name, which is in parentheses: utime and
    # stime are the 14th and 15th of the whole line.
    [_, after_name] = String.split(stat, ") ", parts: 2)
    fields = String.split(after_name, " ")
    ticks = String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))

    [rss] =
      Regex.run(~r/VmRSS:\s+(\d+) kB/, File.read!("/proc/#{os_pid}/status"),
        capture: :all_but_first
      )

    {ticks / ticks_per_s, String.to_integer(rss)}
  end

  @doc "The kernel's clock ticks per second, the unit of /proc's CPU times."
  def clock_ticks_per_s do
    case System.cmd("getconf", ["CLK_TCK"]) do
      {out, 0} -> String.to_integer(String.trim(out))
      _ -> 100
    end
  end

  @doc """
  The user + system CPU seconds of every node this one is connected to
  (their OS processes, all local), summed: what a run costs, callers and
  all.
  """
  def nodes_cpu_s(ticks_per_s) do
    Node.list()
    |> Enum.map(fn node -> :erpc.call(node, :os, :getpid, []) end)
    |> Enum.map(fn os_pid -> elem(os_process(os_pid, ticks_per_s), 0) end)
    |> Enum.sum()
  end

  @doc "Prints a faint progress line."
  def progress(text), do: IO.puts(IO.ANSI.format([:faint, "  ... ", :reset, text]))

  @doc "The nearest-rank `p` percentile (0 < p <= 1) of a sorted list; nil when empty."
  def percentile([], _p), do: nil

  def percentile(sorted, p) do
    n = length(sorted)
    Enum.at(sorted, max(0, ceil(p * n) - 1))
  end

  @doc """
  Where and when a run on the three local nodes ran, with `extra` fields:
  the `environment` of every result file.
  """
  def environment(extra) do
    {os_family, os_name} = :os.type()

    Map.merge(
      %{
        date: DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601(),
        otp: System.otp_release(),
        elixir: System.version(),
        schedulers: System.schedulers_online(),
        os: "#{os_family}/#{os_name}",
        nodes: 3
      },
      extra
    )
  end

  @doc """
  Writes `result` as `bench/results/<prefix><date>.json`, stamped with its
  environment's date, and returns the path relative to the working
  directory.
  """
  def write_result(prefix, result) do
    dir = Path.expand("results", __DIR__)
    File.mkdir_p!(dir)
    stamp = result.environment.date |> String.replace(~r/[^0-9T]/, "")
    path = Path.join(dir, "#{prefix}#{stamp}.json")
    File.write!(path, json(result) <> "\n")
    Path.relative_to_cwd(path)
  end

  @doc "JSON of maps, lists, strings, atoms (nil as null), numbers and booleans."
  def json(map) when is_map(map) do
    inner = Enum.map_join(map, ",", fn {k, v} -> json(to_string(k)) <> ":" <> json(v) end)
    "{" <> inner <> "}"
  end

  def json(list) when is_list(list), do: "[" <> Enum.map_join(list, ",", &json/1) <> "]"
  def json(nil), do: "null"
  def json(b) when is_boolean(b), do: to_string(b)
  def json(a) when is_atom(a), do: json(Atom.to_string(a))
  def json(n) when is_number(n), do: to_string(n)
  def json(s) when is_binary(s), do: inspect(s, printable_limit: :infinity)
end
