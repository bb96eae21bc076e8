//! Datasets: IDX (MNIST-type) and CIFAR binary readers, name resolution, download, test-time transforms.
