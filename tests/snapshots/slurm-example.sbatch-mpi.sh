#!/bin/bash

#SBATCH --job-name=parsl.mpi.block-0.<time>
#SBATCH --output=/runs/example/runinfo/<NNN>/submit_scripts/parsl.mpi.block-0.<time>.stdout
#SBATCH --error=/runs/example/runinfo/<NNN>/submit_scripts/parsl.mpi.block-0.<time>.stderr
#SBATCH --nodes=1
#SBATCH --time=120
#SBATCH --ntasks-per-node=1

#SBATCH --partition=compute
#SBATCH --cpus-per-task=8

module load apptainer
export PARSL_CORES=8


export JOBNAME="parsl.mpi.block-0.<time>"

process_worker_pool.py  --max_workers_per_node=1 -a <driver address> -p 0 -c 1e-09 -m None --poll 10 --port=<port> --cert_dir /runs/example/runinfo/<NNN>/mpi/certificates --logdir=/runs/example/runinfo/workers --logconf=<logconf> --block_id=0 --hb_period=5  --hb_threshold=60 --drain_period=None --cpu-affinity none --enable_mpi_mode  --mpi-launcher=srun --available-accelerators 
