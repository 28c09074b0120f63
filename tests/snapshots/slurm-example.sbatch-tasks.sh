#!/bin/bash

#SBATCH --job-name=parsl.tasks.block-0.<time>
#SBATCH --output=/runs/example/runinfo/<NNN>/submit_scripts/parsl.tasks.block-0.<time>.stdout
#SBATCH --error=/runs/example/runinfo/<NNN>/submit_scripts/parsl.tasks.block-0.<time>.stderr
#SBATCH --nodes=1
#SBATCH --time=120
#SBATCH --ntasks-per-node=1

#SBATCH --partition=compute
#SBATCH --cpus-per-task=8

module load apptainer
export PARSL_CORES=8


export JOBNAME="parsl.tasks.block-0.<time>"

set -e
export CORES=$SLURM_CPUS_ON_NODE
export NODES=$SLURM_JOB_NUM_NODES

[[ "0" == "1" ]] && echo "Found cores : $CORES"
[[ "0" == "1" ]] && echo "Found nodes : $NODES"
WORKERCOUNT=1
SCRIPT_DIR="/runs/example/runinfo/<NNN>/submit_scripts"
[[ -d $SCRIPT_DIR ]] || SCRIPT_DIR=""

cat << SLURM_EOF > ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh
apptainer exec --bind /shared/data:/shared/data --bind /runs/example:/runs/example /shared/images/spibatch.sif python3 -m spibatch.parsl_lean process_worker_pool.py  --max_workers_per_node=8 -a <driver address> -p 0 -c 1.0 -m None --poll 10 --port=<port> --cert_dir /runs/example/runinfo/<NNN>/tasks/certificates --logdir=/runs/example/runinfo/workers --logconf=<logconf> --block_id=0 --hb_period=5  --hb_threshold=60 --drain_period=None --cpu-affinity none  --mpi-launcher=mpiexec --available-accelerators 
SLURM_EOF
chmod a+x ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh

srun --ntasks 1 -l  bash ${SCRIPT_DIR:+$SCRIPT_DIR/}cmd_$SLURM_JOB_NAME.sh

[[ "0" == "1" ]] && echo "Done"

