#!/bin/sh
echo script ran as $(id -u)
