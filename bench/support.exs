# What the bench scripts share: progress lines, percentiles, the run's
# environment, and writing a result as JSON (a tiny encoder: no hex
# packages here).
defmodule Visor.Bench.Support do
  @moduledoc false

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
