"""A small PyTorch CNN training script, ported line by line: `import torch` -> `import cubn`, torch.nn -> cubn.nn,
and the data loader -> cubn.data.DataLoader (cubn's takes arrays, not a Dataset). Everything else is the PyTorch
script as written: a Module with a forward, x.view(x.size(0), -1), model.apply with nn.init, clip_grad_norm_,
outputs.max(1) for the predictions, if loss > 100, f"{loss:.4f}", state_dict save and load.
"""
import cubn
import cubn.nn as nn
import cubn.nn.functional as F
from cubn.data import DataLoader, load_digits


class Net(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(0.1)
        self.fc = nn.Linear(32 * 2 * 2, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = x.view(x.size(0), -1)
        return self.fc(self.dropout(x))


def init_weights(m):
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)


cubn.manual_seed(0)
device = "cuda" if cubn.has_gpu() else "cpu"
(x, y), (xt, yt) = load_digits("train"), load_digits("test")
train_loader = DataLoader(x, y, batch_size=64, shuffle=True, seed=0, device=device)
test_loader = DataLoader(xt, yt, batch_size=256, device=device)
model = Net().to(device)
model.apply(init_weights)
optimizer = cubn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
scheduler = cubn.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)

for epoch in range(3):
    model.train()
    running = 0.0
    for i, (inputs, targets) in enumerate(train_loader):
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = F.cross_entropy(outputs, targets)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)
        optimizer.step()
        running += loss.item()
        if loss > 100:
            raise RuntimeError("diverged")
    scheduler.step()
    model.eval()
    correct, total = 0, 0
    with cubn.no_grad():
        for inputs, targets in test_loader:
            outputs = model(inputs)
            _, predicted = outputs.max(1)
            total += targets.size(0)
            correct += (predicted == targets).sum().item()
    print(f"epoch {epoch + 1}: train loss {running / (i + 1):.4f}, last batch {loss:.4f}, "
          f"test accuracy {100.0 * correct / total:.2f}%")
cubn.save(model.state_dict(), "net.npz")   # written in the working folder
model2 = Net()
model2.load_state_dict(cubn.load("net.npz"))
print("reloaded", sum(p.numel() for p in model2.parameters()), "parameters")
