"""LeNet-5 on Fashion-MNIST, in stock PyTorch, from a sealed dataset.

Only the lines marked `# blindfold` differ from the plain PyTorch script; the plain
lines they replace are in the comment beside them. Run inside the trusted zone:

    python examples/pytorch/train_lenet.py --dataset s3://bucket/fashion \
        --broker https://owner.example:8443 --ca-cert broker.pem --job lenet5 \
        --out s3://bucket/models/lenet5-1

and the owner opens the model with `blindfold model open ... --dataset ID`.
`--tee sample` (no hardware root of trust) works only with a policy that names it.
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader

from blindfold.torch import SealedDataset, save_sealed  # blindfold

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--dataset", required=True, help="sealed Fashion-MNIST (folder or s3://)")
p.add_argument("--broker", required=True)
p.add_argument("--ca-cert")
p.add_argument("--tee", default="tsm", choices=["tsm", "sample"])
p.add_argument("--job", default="lenet5")
p.add_argument("--out", required=True, help="where the sealed model goes")
p.add_argument("--epochs", type=int, default=1)
args = p.parse_args()

torch.manual_seed(42)
torch.use_deterministic_algorithms(True)
key = dict(broker=args.broker, ca_cert=args.ca_cert, tee=args.tee, job=args.job)
to_float = lambda x: x.float().div(255).unsqueeze(0)  # noqa: E731  ([28, 28] u8 -> [1, 28, 28], as ToTensor)
train = SealedDataset(args.dataset, "train", transform=to_float, **key)  # blindfold (was: FashionMNIST(root, train=True, transform=ToTensor()))
test = SealedDataset(args.dataset, "test", transform=to_float, **key)  # blindfold (was: FashionMNIST(root, train=False, transform=ToTensor()))

model = nn.Sequential(
    nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loader = DataLoader(train, batch_size=64, shuffle=True, num_workers=2)

for epoch in range(args.epochs):
    model.train()
    for x, y in loader:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        right = sum((model(x).argmax(1) == y).sum().item() for x, y in DataLoader(test, batch_size=1000))
    print(f"epoch {epoch + 1}: test accuracy {right / len(test):.4f}")

save_sealed(model.state_dict(), out=args.out, dataset=train, metrics={"test_accuracy": right / len(test)})  # blindfold (was: torch.save(model.state_dict(), "lenet5.pt"))
