defmodule Visor.Groups.Backoff do
  @moduledoc false
  # How long a keyed group's host (`Visor.Groups.Host`) waits before it
  # starts a group's processes on its node again, after they exited or
  # failed to start: 1 s after a first failure, doubling with each
  # failure in a row, at most 30 s. A failure more than 60 s after the
  # previous one starts a new row: a group that ran that long was
  # healthy. A group that can never start (a bad `initial_state/1`, no
  # file descriptors left) is tried about twice a minute, not in a loop
  # that floods the log; one that crashed once comes back after 1 s, as
  # a default group's supervisor would restart it.
  #
  # A pure value per group: `failed/2` takes the monotonic time (ms) of a
  # failure and returns the wait and the next value.

  @first_ms 1_000
  @max_ms 30_000
  @healthy_ms 60_000

  defstruct failures: 0, last: nil

  @type t :: %__MODULE__{failures: non_neg_integer(), last: integer() | nil}

  @doc "No failure yet."
  @spec new() :: t()
  def new, do: %__MODULE__{}

  @doc """
  A failure at `now` (monotonic ms): the wait before the next start (ms),
  the failures in a row so far, and the next value.

      iex> {wait, 1, b} = Visor.Groups.Backoff.failed(Visor.Groups.Backoff.new(), 0)
      iex> wait
      1000
      iex> {wait, 2, b} = Visor.Groups.Backoff.failed(b, 1_100)
      iex> wait
      2000
      iex> {wait, 1, _} = Visor.Groups.Backoff.failed(b, 70_000)
      iex> wait
      1000
  """
  @spec failed(t(), integer()) :: {pos_integer(), pos_integer(), t()}
  def failed(%__MODULE__{failures: failures, last: last}, now) do
    failures = if last != nil and now - last <= @healthy_ms, do: failures + 1, else: 1
    wait = min(@first_ms * Integer.pow(2, min(failures - 1, 15)), @max_ms)
    {wait, failures, %__MODULE__{failures: failures, last: now}}
  end

  @doc "The longest wait (ms)."
  @spec max_ms() :: pos_integer()
  def max_ms, do: @max_ms
end
