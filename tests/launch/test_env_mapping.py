"""What each task of a Slurm job sees, mapped to torch.distributed's rank and rendezvous."""
from resdepth.dist import detect_env, master_port_for_job, parse_nodelist


def srun_env(procid: int, nodelist: str, ntasks_per_node: int, job_id: str = "731") -> dict:
    """The variables srun gives task ``procid`` of a block-distributed job."""
    hosts = parse_nodelist(nodelist)
    return {"SLURM_JOB_ID": job_id, "SLURM_PROCID": str(procid),
            "SLURM_NTASKS": str(len(hosts) * ntasks_per_node),
            "SLURM_LOCALID": str(procid % ntasks_per_node),
            "SLURM_NODEID": str(procid // ntasks_per_node), "SLURM_JOB_NODELIST": nodelist}


def test_five_nodes_of_eight_gpus():
    nodelist = "gpu[001-004,010]"
    envs = [detect_env(srun_env(r, nodelist, 8)) for r in range(40)]
    assert [e.rank for e in envs] == list(range(40))
    assert {e.world_size for e in envs} == {40}
    assert [e.local_rank for e in envs[8:16]] == list(range(8))
    assert {e.master_addr for e in envs} == {"gpu001"}  # every task rendezvous at the first node
    assert {e.master_port for e in envs} == {master_port_for_job("731")}
    assert {e.source for e in envs} == {"slurm"}


def test_two_node_job_of_the_dry_run():
    env = detect_env(srun_env(13, "node[07-08]", 8, job_id="123456"))
    assert (env.rank, env.world_size, env.local_rank, env.master_addr) == (13, 16, 5, "node07")
    exported: dict = {}
    env.export(exported)
    assert exported == {"RANK": "13", "WORLD_SIZE": "16", "LOCAL_RANK": "5",
                        "MASTER_ADDR": "node07", "MASTER_PORT": str(master_port_for_job("123456"))}


def test_array_task_ids_share_the_port():
    assert master_port_for_job("4242_3") == master_port_for_job("4242")


def test_old_slurm_nodelist_name():
    env = srun_env(1, "cn[1-2]", 1)
    env["SLURM_NODELIST"] = env.pop("SLURM_JOB_NODELIST")
    assert detect_env(env).master_addr == "cn1"
