defmodule Visor.NifBuildTest do
  # The Mix compiler that builds the NIF (Mix.Tasks.Compile.VisorNif, in
  # mix.exs): it installs the library cargo reports for the build it just
  # ran, wherever cargo's target directory is, and never a stale one.
  use ExUnit.Case, async: true

  alias Mix.Tasks.Compile.VisorNif

  @root Path.expand("../..", __DIR__)

  # One line of `cargo build --message-format=json` per artifact, shortened
  # to the fields that matter, as cargo writes them.
  defp artifact_line(name, crate_type, filename) do
    ~s({"reason":"compiler-artifact","package_id":"path+file:///src/native/#{name}#0.2.0",) <>
      ~s("target":{"kind":["#{crate_type}"],"crate_types":["#{crate_type}"],"name":"#{name}"},) <>
      ~s("filenames":["#{filename}"],"executable":null,"fresh":true})
  end

  describe "artifact_path/1" do
    test "finds the NIF library among cargo's messages, wherever the target directory is" do
      output =
        Enum.join(
          [
            artifact_line("vsr", "lib", "/elsewhere/release/deps/libvsr-1.rlib"),
            artifact_line("visor_nif", "cdylib", "/tmp/my target/release/libvisor_nif.so"),
            ~s({"reason":"build-finished","success":true}),
            ""
          ],
          "\n"
        )

      assert VisorNif.artifact_path(output) == {:ok, "/tmp/my target/release/libvisor_nif.so"}
    end

    test "decodes JSON escapes in the path" do
      line = artifact_line("visor_nif", "cdylib", ~S(/t\"x\\y\u00e9\/release/libvisor_nif.so))
      assert VisorNif.artifact_path(line) == {:ok, ~S(/t"x\yé/release/libvisor_nif.so)}
    end

    test "is :error when cargo reported no library for the crate" do
      assert VisorNif.artifact_path("") == :error

      assert VisorNif.artifact_path(artifact_line("visor_nif", "lib", "/t/libvisor_nif.rlib")) ==
               :error
    end

    test "names the library in cargo's own target directory for a real build" do
      # As mix compile ran it (VISOR_NIF_DEBUG_INFO included): a no-op, and
      # quiet (its JSON messages are on stdout all the same).
      args = VisorNif.cargo_args(debug_info: VisorNif.debug_info?()) ++ ["-q"]
      {output, 0} = System.cmd("cargo", args, cd: @root)
      {metadata, 0} = System.cmd("cargo", ~w(metadata --format-version 1 --no-deps), cd: @root)
      [_, target_dir] = Regex.run(~r/"target_directory":"([^"]*)"/, metadata)

      assert {:ok, path} = VisorNif.artifact_path(output)
      assert path == Path.join([target_dir, "release", "libvisor_nif.so"])
      # What mix compile installed is this very build.
      assert File.read!(path) == File.read!(Path.join(@root, "priv/native/libvisor_nif.so"))
    end
  end

  describe "cargo_args/1" do
    test "builds release with JSON messages; keeps debug info only when asked" do
      plain = VisorNif.cargo_args(debug_info: false)

      assert ["build", "--release", "-p", "visor_nif", "--message-format=json-render-diagnostics"] =
               plain

      debug = VisorNif.cargo_args(debug_info: true)
      assert "--config=profile.release.package.visor_nif.debug=1" in debug
      assert ~s(--config=profile.release.package.visor_nif.strip="none") in debug
    end
  end

  describe "shown_lines/2" do
    defp show(lines) do
      {shown, _} =
        Enum.flat_map_reduce(lines, false, fn line, announced? ->
          VisorNif.shown_lines(line, announced?)
        end)

      shown
    end

    test "a no-op build shows nothing" do
      assert show(["    Finished `release` profile [optimized] target(s) in 0.07s"]) == []
      assert show(["\e[1m\e[92m    Finished\e[0m `release` profile [optimized] target(s)"]) == []
    end

    test "a build that compiles says what it builds first, then shows cargo's progress" do
      lines = [
        "   Compiling vsr v0.2.0 (/src/native/vsr)",
        "   Compiling visor_nif v0.2.0 (/src/native/visor_nif)",
        "    Finished `release` profile [optimized] target(s) in 2m 03s"
      ]

      assert [header | ^lines] = show(lines)
      assert header =~ "building its engine"
      assert header =~ "cargo build --release"
      assert header =~ "a first build takes a few minutes"
    end

    test "cargo's errors are shown" do
      lines = ["error[E0425]: cannot find value `x` in this scope", "  --> src/lib.rs:1:1"]
      assert [_header | ^lines] = show(lines)
    end
  end

  describe "install/2" do
    setup do
      dir = Path.join(System.tmp_dir!(), "visor-nif-build-#{System.unique_integer([:positive])}")
      File.mkdir_p!(dir)
      on_exit(fn -> File.rm_rf!(dir) end)
      %{built: Path.join(dir, "target/libvisor_nif.so"), installed: Path.join(dir, "priv/lib.so")}
    end

    test "copies a new build, then does nothing until the build changes", ctx do
      write(ctx.built, "build 1", 1_000_000)
      assert VisorNif.install(ctx.built, ctx.installed) == :ok
      assert File.read!(ctx.installed) == "build 1"
      assert VisorNif.install(ctx.built, ctx.installed) == :noop

      write(ctx.built, "build 2", 1_000_100)
      assert VisorNif.install(ctx.built, ctx.installed) == :ok
      assert File.read!(ctx.installed) == "build 2"
    end

    test "replaces an installed library that is newer than the build but not its copy", ctx do
      # E.g. installed from another target directory, then this one built:
      # a newer mtime on the installed file proves nothing.
      write(ctx.built, "this build", 1_000_000)
      write(ctx.installed, "other one!", 2_000_000)

      assert VisorNif.install(ctx.built, ctx.installed) == :ok
      assert File.read!(ctx.installed) == "this build"
    end

    test "never rewrites the installed file in place (a running VM may have it mapped)", ctx do
      write(ctx.built, "build 1", 1_000_000)
      :ok = VisorNif.install(ctx.built, ctx.installed)
      # A second name for the installed file stands for a VM's mapping of it.
      mapped = ctx.installed <> ".mapped"
      File.ln!(ctx.installed, mapped)

      write(ctx.built, "build 2", 1_000_100)
      :ok = VisorNif.install(ctx.built, ctx.installed)
      assert File.read!(ctx.installed) == "build 2"
      assert File.read!(mapped) == "build 1"
    end
  end

  defp write(path, content, mtime) do
    File.mkdir_p!(Path.dirname(path))
    File.write!(path, content)
    File.touch!(path, mtime)
  end
end
