"""Sample from a trained model, as the reference's evaluate_model.py (same as `consingan generate`).

It takes the reference's flags (--model_dir, --gpu, --num_samples, --naive_img, --manualSeed as the
seed, --not_cuda) and everything `consingan generate` takes. The reference also wrote samples at
2x width, 2x height and both; ask for each with --scale_w / --scale_h:

    python evaluate_model.py --model_dir TrainedModels/rocket/<run> --num_samples 50
    python evaluate_model.py --model_dir TrainedModels/rocket/<run> --scale_w 2 --manualSeed 0
    python evaluate_model.py --model_dir TrainedModels/lightning/<run>   # an animation model: GIFs
"""
from consingan.cli import script

if __name__ == "__main__":
    script("generate")
