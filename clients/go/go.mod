module sluice.invalid/client

go 1.21
