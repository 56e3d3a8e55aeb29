defmodule Mix.Tasks.Compile.VisorNif do
  @moduledoc """
  Builds the `visor_nif` crate and installs it as `priv/native/libvisor_nif.so`.

  Defined in mix.exs (not lib/) because Mix must know this compiler before
  it compiles lib/ with `:elixir`. hex.pm is unreachable here, so the
  rustler and elixir_make packages are not an option.
  """
  use Mix.Task.Compiler

  @crate "visor_nif"
  @lib "lib#{@crate}.so"

  @impl Mix.Task.Compiler
  def run(_args) do
    root = Path.dirname(Mix.Project.project_file())
    built = Path.join([root, "target", "release", @lib])
    installed = installed_path(root)

    # Always release: the NIF runs on BEAM schedulers and the debug build
    # is far slower. cargo is incremental, so a no-op build takes ~0.1 s.
    # -q keeps cargo silent unless it has warnings or errors to show.
    cargo = ~w(build --release -q -p #{@crate})

    unless System.find_executable("cargo") do
      Mix.raise("cargo not found in PATH: Visor needs a Rust toolchain to build its NIF")
    end

    case System.cmd("cargo", cargo, cd: root, stderr_to_stdout: true, into: IO.stream()) do
      {_, 0} -> :ok
      {_, status} -> Mix.raise("cargo build of #{@crate} failed (exit #{status})")
    end

    status = install(built, installed)
    # Mix links priv/ into _build only if it existed when the build started;
    # on a first build it did not, so link it now (idempotent).
    Mix.Project.build_structure()
    {status, []}
  end

  @impl Mix.Task.Compiler
  def clean, do: File.rm(installed_path(Path.dirname(Mix.Project.project_file())))

  defp installed_path(root), do: Path.join([root, "priv", "native", @lib])

  defp install(built, installed) do
    if up_to_date?(built, installed) do
      :noop
    else
      File.mkdir_p!(Path.dirname(installed))
      # Remove first, never write over the old file: a running VM may have it
      # mapped, and rewriting a mapped .so in place crashes that VM.
      _ = File.rm(installed)
      File.cp!(built, installed)
      :ok
    end
  end

  defp up_to_date?(built, installed) do
    with {:ok, b} <- File.stat(built, time: :posix),
         {:ok, i} <- File.stat(installed, time: :posix) do
      b.size == i.size and i.mtime >= b.mtime
    else
      _ -> false
    end
  end
end

defmodule Visor.MixProject do
  use Mix.Project

  def project do
    [
      app: :visor,
      version: "0.2.0",
      elixir: "~> 1.14",
      compilers: [:visor_nif] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      start_permanent: Mix.env() == :prod,
      deps: []
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
end
