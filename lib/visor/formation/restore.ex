defmodule Visor.Formation.Restore do
  @moduledoc false
  # Disk mode (`storage: :disk`): whether this node restarts from the store
  # in its `data_dir`, as a pure function of what the store's superblock
  # says (`Visor.Native.probe/2`, which `Visor.Formation` reads before
  # anything else).
  #
  # If there is a store, this node's replica ran and wrote everything it
  # acknowledged: it is a member of the cluster the store records (its id,
  # and the member list `store_meta/2` put into the store's metadata when
  # the store was created), and it restarts from the store at once, without
  # waiting for anyone: after every node died, each restarts from its own
  # disk and a quorum of them serves again. The formation process is then a
  # formed member like any other (it advertises the cluster in its hellos,
  # reconnects distribution, records the others' incarnations). A store that
  # does not fit (another group, a member list that does not name this node
  # in the store's place, another `nodes:` list or `cluster_size:`, other
  # shared settings, an unreadable superblock) is refused: the group does
  # not start, and the files are left as they are.
  #
  # With an empty store the node forms as in memory mode (a node whose
  # `data_dir` was wiped is a restarted node: it rejoins and recovers).
  #
  # `nodes:` mode also keeps, in a file `formation` in the store's
  # directory that `Visor.Formation` writes when it decides (before the
  # replica creates the store), its *formation snapshot*: the incarnation of
  # each other member it knew as let in fresh at that moment.
  # `formation_record/1` encodes it, `check/3` reads it back as
  # `formed_with`. A restored member lets a member it has not answered
  # itself in fresh under that incarnation only (`Visor.Formation.Explicit`
  # says why that is safe). A missing or unreadable file reads as an empty
  # snapshot: every such member is then told to rejoin, which is always
  # safe. `check/3` also says whether the superblock records that the
  # replica was recovering (`recovering`: it restarts recovering, with no
  # memory of its own, and answers as a rejoined member does).

  alias Visor.Formation.Decider
  alias Visor.{MemberId, Options}

  @typedoc """
  What this node is started with: the group's name, this node, the store's
  directory, the shared settings, and the membership
  (`{:nodes, members, cluster_id}` or `{:cluster_size, n}`).
  """
  @type expected :: %{
          group: String.t(),
          node: node(),
          dir: String.t(),
          settings: map(),
          membership: {:nodes, [node()], <<_::128>>} | {:cluster_size, pos_integer()}
        }

  @doc """
  The metadata kept in a new store's superblock: the cluster's member
  nodes and shared settings, which `check/2` reads back on a restart.
  Node names are kept as strings, so that reading them back never depends
  on which atoms exist yet.
  """
  @spec store_meta([node()], map()) :: binary()
  def store_meta(members, settings) do
    :erlang.term_to_binary(%{
      visor: 1,
      members: Enum.map(members, &Atom.to_string/1),
      settings: settings
    })
  end

  @doc "The file, in the store's directory, that keeps `formation_record/1`."
  @spec formation_file(String.t()) :: String.t()
  def formation_file(dir), do: Path.join(dir, "formation")

  @doc """
  What the `formation` file keeps of a `nodes:` decision: the cluster id,
  and the incarnation of each other member the deciding process knew as
  let in fresh (`formed_with`).
  """
  @spec formation_record(%{cluster: <<_::128>>, formed_with: %{node() => integer()}}) ::
          binary()
  def formation_record(%{cluster: cluster, formed_with: formed_with}) do
    :erlang.term_to_binary(%{
      visor: 1,
      cluster: cluster,
      formed_with: Map.new(formed_with, fn {node, inc} -> {Atom.to_string(node), inc} end)
    })
  end

  @doc """
  What the probe of the store says for this node: `:empty` (no store:
  form as in memory mode), `{:ok, restored}` (restart from it as the
  member it records), or `{:error, message}` (refuse to start).
  `record` is the content of the store's `formation` file, or `nil`.
  """
  @spec check(:empty | {:ok, map()} | {:error, String.t()}, expected(), binary() | nil) ::
          :empty | {:ok, Decider.restored()} | {:error, String.t()}
  def check(probe, expected, record \\ nil)

  def check(:empty, _expected, _record), do: :empty

  def check({:error, message}, expected, _record),
    do: {:error, "cannot read the store in #{expected.dir}: #{message}"}

  def check({:ok, info}, %{dir: dir} = expected, record) do
    with :ok <-
           ensure(info.group == expected.group, fn ->
             "#{dir} holds group #{inspect(info.group)}"
           end),
         {:ok, members, settings} <- stored_meta(dir, info),
         settings = Options.complete_settings(settings),
         # The store's member id names the node (Visor.MemberId): its
         # place in `members`, the list the cluster was formed with, or,
         # for a node a change added, the md5 of its name; whatever the
         # store's epoch or role, where the probe's `replica` (its slot in
         # the membership it records) is nil once it was left out.
         index = member_index(info),
         genesis? = is_integer(index) and index < length(members),
         owner =
           if(genesis?,
             do: Enum.at(members, index),
             else: MemberId.node_of(members, info.member, [expected.node])
           ),
         :ok <-
           ensure(owner == expected.node and (added?(info) or info.replica in [index, nil]), fn ->
             "#{dir} belongs to member #{describe_id(info)} (#{inspect(owner)}) of the cluster " <>
               "#{inspect(members)}, not to this node (#{expected.node})"
           end),
         :ok <- check_settings(expected, settings),
         :ok <- check_membership(expected, info, members),
         :ok <- check_role(dir, info, genesis?) do
      restored(info, expected, record, members, settings, index, genesis?)
    end
  end

  # An earlier learner's store (its change was not done while it ran):
  # the node starts as a spare; a member asking it to learn again moves
  # the store aside first (Visor.Server).
  defp restored(%{role: :learner}, _expected, _record, _members, _settings, _index, _genesis?),
    do: :empty

  defp restored(info, expected, record, members, settings, index, genesis?) do
    dir = expected.dir

    # A node a change added (a node of the genesis list added again too)
    # restarts at the slot and as the member its store records.
    joining =
      if added?(info),
        do: %{slot: info.replica, member: info.member, joined: info.joined}

    {:ok,
     %{
       cluster: info.cluster,
       members: members,
       settings: settings,
       joining: joining,
       replica: if(genesis? and not added?(info), do: index, else: info.replica),
       epoch: Map.get(info, :epoch, 0),
       role: Map.get(info, :role, :member),
       view: info.view,
       commit: info.commit,
       dir: dir,
       formed_with: formed_with(record, info.cluster, members),
       recovering: Map.get(info, :recovering, false)
     }}
  end

  defp describe_id(%{member: <<id::little-unsigned-128>>}) when id < 64, do: id
  defp describe_id(%{member: id}) when is_binary(id), do: Base.encode16(id, case: :lower)
  defp describe_id(info), do: info.replica

  # The formation snapshot, from the `formation` file of this very
  # cluster; empty if there is no such file.
  # Like the store's metadata, nothing but the expected shape is taken,
  # and no atom is created.
  defp formed_with(record, cluster, members) when is_binary(record) do
    case :erlang.binary_to_term(record, [:safe]) do
      %{visor: 1, cluster: ^cluster, formed_with: incs} when is_map(incs) ->
        for node <- members,
            inc = Map.get(incs, Atom.to_string(node)),
            is_integer(inc),
            into: %{},
            do: {node, inc}

      _ ->
        %{}
    end
  rescue
    ArgumentError -> %{}
  end

  defp formed_with(_no_record, _cluster, _members), do: %{}

  defp stored_meta(dir, info) do
    case read_store_meta(info.meta) do
      {:ok, members, settings} -> {:ok, members, settings}
      :error -> {:error, "#{dir} holds a store whose metadata Visor did not write"}
    end
  end

  # The member list and settings of `store_meta/2`, or :error. The store
  # is local and checksummed, but it may have been written by something
  # else: nothing but the expected shape is accepted, and no atom is
  # created before the shape is checked.
  defp read_store_meta(meta) do
    with %{visor: 1, members: [_ | _] = names, settings: settings} when is_map(settings) <-
           :erlang.binary_to_term(meta, [:safe]),
         true <- node_names?(names) do
      {:ok, Enum.map(names, &String.to_atom/1), settings}
    else
      _ -> :error
    end
  rescue
    ArgumentError -> :error
  end

  @doc """
  Whether `names`, read back from a file, is a member list of node names
  kept as strings (`store_meta/2`): checked before any becomes an atom.
  """
  @spec node_names?(term()) :: boolean()
  def node_names?(names) do
    Decider.member_list?(names) and
      Enum.all?(names, &(is_binary(&1) and &1 =~ ~r/^[^@\s]+@[^@\s]+$/))
  end

  # The store's cluster was formed with these settings; every member keeps
  # them for the cluster's life.
  defp check_settings(expected, stored) do
    case Options.setting_mismatch(expected.settings, stored) do
      nil ->
        :ok

      {:setting_mismatch, key, ours, theirs} ->
        {:error,
         "#{expected.dir} holds the store of a cluster whose #{key} is #{inspect(theirs)}, but " <>
           "this node is started with #{key} #{inspect(ours)} (option " <>
           "#{Options.setting_source(key)}); every member must keep the cluster's value: " <>
           "start it with #{key} #{inspect(theirs)}"}
    end
  end

  defp check_membership(%{membership: {:nodes, nodes, cluster}, dir: dir}, info, members) do
    ensure(members == nodes and info.cluster == cluster, fn ->
      "#{dir} holds the store of the cluster #{inspect(members)}, but this node is " <>
        "started with nodes: #{inspect(nodes)}; start it with the same nodes, or " <>
        "move the data_dir away (this node's replica then rejoins or starts anew)"
    end)
  end

  defp check_membership(%{membership: {:cluster_size, size}, dir: dir}, _info, members) do
    ensure(length(members) == size, fn ->
      "#{dir} holds the store of a cluster of #{length(members)} (#{inspect(members)}), " <>
        "but this node is started with cluster_size: #{size}"
    end)
  end

  # The member id (16 bytes, little-endian) as an index, when the probe
  # has one (a probe of an older engine gives `replica` alone).
  defp member_index(%{member: <<id::little-unsigned-128>>}), do: id
  defp member_index(info), do: info.replica

  # A store records the member's role and the epoch of its membership
  # (docs/operations.md, "Membership changes"). A member of any epoch
  # restarts from it as that member; a store left out of its epoch
  # restarts too, and the engine says so (`{:epoch, _, _, :leaving, _}`,
  # then `{:removed, _}` for a removed one: the server stops it and
  # serves as a spare, its store kept). This version of Visor adds no
  # members, so it wrote no learner's store.
  # A member a change added restarts as the member its store records (a
  # learner's store is started over as a spare: restored/7, except on a
  # node of the genesis list added again, which would form as a genesis
  # member); one that has left the list since cannot restart from its
  # store (the engine knows its membership only from the list that left
  # it out).
  defp check_role(dir, info, genesis?) do
    role = Map.get(info, :role, :member)
    epoch = Map.get(info, :epoch, 0)

    ok? =
      if added?(info),
        do: (role == :member and is_integer(info.replica)) or (role == :learner and not genesis?),
        else: role in [:member, :leaving, :removed]

    ensure(ok?, fn ->
      "#{dir} holds the store of a #{role} in epoch #{epoch} that a change added to its " <>
        "cluster, which cannot restart from it; move it away (the node serves as a spare, " <>
        "and may be added again)"
    end)
  end

  # Whether the store is of a member a change added (`joined` after the
  # genesis).
  defp added?(info), do: Map.get(info, :joined, 0) > 0

  defp ensure(true, _message), do: :ok
  defp ensure(false, message), do: {:error, message.()}
end
