defmodule Visor.Test.CodeVersions do
  @moduledoc """
  Two versions of one module, for hot code loading tests: `compile/1`
  compiles a source string to the module's object code and leaves nothing
  loaded (so the next version compiles without a redefinition warning);
  `load/2` loads such code on a node, as a hot upgrade does (the code
  running there becomes the old code).
  """

  @doc "Compiles `source` (one module) to `{module, object_code}`, leaving it unloaded."
  @spec compile(String.t()) :: {module(), binary()}
  def compile(source) do
    [{module, binary}] = Code.compile_string(source)
    unload(module)
    {module, binary}
  end

  @doc """
  Compiles a `use Visor` module named `module` whose state starts as
  `initial` (source text) and whose other callbacks are `callbacks`
  (source text, each with its `@impl Visor`), as `compile/1` does.
  """
  @spec state_machine(module(), String.t(), String.t()) :: {module(), binary()}
  def state_machine(module, callbacks, initial \\ "[]") do
    compile("""
    defmodule #{inspect(module)} do
      use Visor
      @impl Visor
      def initial_state(_), do: #{initial}
      #{callbacks}
    end
    """)
  end

  @doc "Loads `{module, object_code}` on `node` (this node by default): a hot code load."
  @spec load({module(), binary()}, node()) :: :ok
  def load({module, binary}, node \\ node()) do
    # Only one old version may exist: drop the one before the current code.
    :erpc.call(node, :code, :purge, [module])
    {:module, ^module} = :erpc.call(node, :code, :load_binary, [module, ~c"nofile", binary])
    :ok
  end

  @doc "Unloads `module` from this node entirely."
  @spec unload(module()) :: :ok
  def unload(module) do
    :code.purge(module)
    :code.delete(module)
    :code.purge(module)
    :ok
  end
end
