defmodule Mix.Tasks.Compile.VisorNif do
  @moduledoc false
  # Builds the engine crate (native/visor_nif) with cargo and installs the
  # library as priv/native/libvisor_nif.so, where Visor.Native loads it.
  #
  # Defined in mix.exs, not lib/, because Mix must know this compiler before
  # it compiles lib/. Visor has no hex dependencies (rustler's and
  # elixir_make's Mix tooling included), so the build is done here.
  #
  # The library copied is the one cargo reports for this very build (its
  # `compiler-artifact` message), so CARGO_TARGET_DIR, `build.target-dir`
  # and `build.target` are honoured, and a library left from another build
  # or another target directory is never installed by mistake.

  use Mix.Task.Compiler

  @crate "visor_nif"
  @installed_name "lib#{@crate}.so"

  # Keeps the debug info that the release profile strips from the NIF
  # (Cargo.toml's [profile.release.package.visor_nif]).
  @debug_info_env "VISOR_NIF_DEBUG_INFO"
  @profile "profile.release.package.#{@crate}"

  @impl Mix.Task.Compiler
  def run(_args) do
    root = Path.dirname(Mix.Project.project_file())

    cargo =
      System.find_executable("cargo") ||
        Mix.raise(
          "cargo not found in PATH: Visor needs a Rust toolchain (1.89 or later) to build its NIF"
        )

    {status, messages} = run_cargo(cargo, cargo_args(debug_info: debug_info?()), root)

    if status != 0 do
      Mix.raise("cargo build of #{@crate} failed (exit #{status}): cargo's messages are above")
    end

    built =
      case artifact_path(messages) do
        {:ok, path} -> path
        :error -> Mix.raise("cargo built #{@crate} but reported no library for it")
      end

    result = install(built, installed_path(root))
    # Mix links priv/ into _build only if it existed when the build started;
    # on a first build it did not, so link it now (idempotent).
    Mix.Project.build_structure()
    {result, []}
  end

  @impl Mix.Task.Compiler
  def clean, do: File.rm(installed_path(Path.dirname(Mix.Project.project_file())))

  @doc false
  # Always release: the engine's threads run the protocol, and a debug build
  # of it is many times slower. JSON messages on stdout name the artifacts;
  # progress and rendered diagnostics stay text.
  def cargo_args(opts) do
    debug_info =
      if Keyword.fetch!(opts, :debug_info),
        do: for(setting <- ["debug=1", ~s(strip="none")], do: "--config=#{@profile}.#{setting}"),
        else: []

    ~w(build --release -p #{@crate} --message-format=json-render-diagnostics) ++ debug_info
  end

  # Runs cargo with stdout and stderr as one stream of lines: JSON lines
  # are kept (returned in order), the others are cargo's text, shown as
  # `shown_lines/2` decides while the build runs.
  defp run_cargo(cargo, args, root) do
    port =
      Port.open({:spawn_executable, cargo}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        :hide,
        line: 65_536,
        args: args,
        cd: root
      ])

    collect(port, "", [], false)
  end

  defp collect(port, partial, messages, announced?) do
    receive do
      {^port, {:data, {:noeol, part}}} ->
        collect(port, partial <> part, messages, announced?)

      {^port, {:data, {:eol, part}}} ->
        line = partial <> part

        if String.starts_with?(line, "{") do
          collect(port, "", [line | messages], announced?)
        else
          {shown, announced?} = shown_lines(line, announced?)
          Enum.each(shown, &Mix.shell().info/1)
          collect(port, "", messages, announced?)
        end

      {^port, {:exit_status, status}} ->
        {status, messages |> Enum.reverse() |> Enum.join("\n")}
    end
  end

  @doc false
  # What to show of one line of cargo's text, and whether the build has
  # announced itself. A no-op build (cargo's lone `Finished` line) shows
  # nothing. Anything else (compiling, downloading, waiting for a lock, a
  # warning, an error) is shown, after one line saying what is being built
  # and that a first build takes minutes on a small machine.
  def shown_lines(line, announced?) do
    cond do
      announced? ->
        {[line], true}

      finished_line?(line) ->
        {[], false}

      true ->
        header =
          "==> visor: building its engine (native/#{@crate}, Rust) with " <>
            "`cargo build --release`; a first build takes a few minutes"

        {[header, line], true}
    end
  end

  # Colours (CARGO_TERM_COLOR=always) are escape codes around the word.
  defp finished_line?(line) do
    line
    |> String.replace(~r/\e\[[0-9;]*m/, "")
    |> String.trim_leading()
    |> String.starts_with?("Finished ")
  end

  @doc false
  def debug_info?, do: System.get_env(@debug_info_env, "") not in ["", "0", "false"]

  @doc false
  # The library file of the crate in cargo's JSON messages (one per line):
  # where this build put it, whatever the target directory.
  def artifact_path(cargo_output) do
    cargo_output
    |> String.split("\n")
    |> Enum.find_value(:error, fn line ->
      with true <- String.contains?(line, ~s("reason":"compiler-artifact")),
           true <- String.contains?(line, ~s("crate_types":["cdylib"])),
           true <- String.contains?(line, ~s("name":"#{@crate}")),
           [_, path] <- Regex.run(~r/"filenames":\["((?:[^"\\]|\\.)*)"/, line) do
        {:ok, json_unescape(path)}
      else
        _ -> nil
      end
    end)
  end

  defp json_unescape(string) do
    Regex.replace(~r/\\(u[0-9a-fA-F]{4}|.)/, string, fn _, escape ->
      case escape do
        "u" <> hex -> <<String.to_integer(hex, 16)::utf8>>
        "n" -> "\n"
        "t" -> "\t"
        "r" -> "\r"
        "b" -> "\b"
        "f" -> "\f"
        char -> char
      end
    end)
  end

  defp installed_path(root), do: Path.join([root, "priv", "native", @installed_name])

  @doc false
  # Installs `built` unless `installed` is its copy (same size and mtime:
  # the copy takes the built file's mtime, so any rebuild differs).
  def install(built, installed) do
    built_stat = File.stat!(built, time: :posix)

    case File.stat(installed, time: :posix) do
      {:ok, %{size: size, mtime: mtime}}
      when size == built_stat.size and mtime == built_stat.mtime ->
        :noop

      _ ->
        File.mkdir_p!(Path.dirname(installed))
        # Remove first, never write over the old file: a running VM may have
        # it mapped, and rewriting a mapped .so in place crashes that VM.
        _ = File.rm(installed)
        File.cp!(built, installed)
        File.touch!(installed, built_stat.mtime)
        :ok
    end
  end
end

defmodule Visor.MixProject do
  use Mix.Project

  @version "0.2.0"

  def project do
    [
      app: :visor,
      version: @version,
      elixir: "~> 1.14",
      compilers: [:visor_nif] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: [],
      description:
        "A GenServer's state replicated across BEAM nodes with Viewstamped Replication: " <>
          "a Rust engine (a NIF built with cargo, Rust 1.89 or later), memory or disk mode.",
      package: package(),
      name: "Visor",
      docs: docs()
    ]
  end

  def application do
    [extra_applications: [:logger]]
  end

  # Test-only helpers (the :peer cluster) live in test/support. The README's
  # Cache (examples/) is compiled for this repository's iex, demo and tests,
  # never for an application that depends on :visor (deps compile as :prod).
  defp elixirc_paths(:test), do: ["lib", "examples", "test/support"]
  defp elixirc_paths(:dev), do: ["lib", "examples"]
  defp elixirc_paths(_), do: ["lib"]

  # What `mix hex.build` packs: the Elixir code and the whole cargo
  # workspace (the NIF crate builds against vsr and vsr_storage, and cargo
  # needs every workspace member and the lockfile to resolve it). priv/ is
  # left out: it holds only the library the build installs.
  defp package do
    [
      licenses: ["Apache-2.0"],
      links: %{
        "Changelog" => "https://hexdocs.pm/visor/changelog.html",
        "Operations" => "https://hexdocs.pm/visor/operations.html"
      },
      files:
        ~w(lib native Cargo.toml Cargo.lock mix.exs .formatter.exs README.md CHANGELOG.md LICENSE docs)
    ]
  end

  # Only `Visor` and `Visor.Groups` (a child spec users start) are public
  # API: the other modules are `@moduledoc false`,
  # documented by a comment at their top and mapped in docs/architecture.md.
  defp docs do
    [
      main: "readme",
      extras:
        ["README.md", "CHANGELOG.md"] ++
          Enum.map(
            ~w(operations commands architecture protocol nif storage testing),
            &"docs/#{&1}.md"
          )
    ]
  end
end
